"""open_clip ViT visual towers as Detectron2 backbones: ``D2OpenCLIPViT`` and its pyramid."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, SimpleFeaturePyramid
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from ..attention import set_attention_kernel
from ..open_clip_model import create_open_clip_model

__all__ = ["D2OpenCLIPViT", "D2OpenCLIPViTPyramid", "ConvStem"]


class ConvStem(nn.Sequential):
    """Stride-2 3x3 convs in place of a ViT's patch projection ("early convolutions", Xiao et al.).

    ``log2(patch_size)`` stages each halve the resolution with a stride-2 conv (channels ``width,
    2*width, ...``, a norm + GELU), followed by ``depth`` stride-1 3x3 convs at that resolution;
    then a 1x1 conv maps to the transformer width. Output stride = patch size.
    """

    def __init__(
        self, *, patch_size: int, width: int, out_channels: int, norm: str = "LN", depth: int = 0
    ):
        """
        Args:
            patch_size: output stride (a power of two).
            width: channels of the first conv.
            out_channels: the transformer width.
            norm: a Detectron2 :func:`get_norm` name ("LN" = channel LayerNorm, "BN", "SyncBN",
                "GN", ...). Batch norm trains a from-scratch stem far faster; "LN" has no batch
                statistics.
            depth: extra stride-1 3x3 convs per stage (0 = one conv per stage).
        """
        num = int(math.log2(patch_size))
        if 2**num != patch_size:
            raise ValueError(f"CONV_STEM needs a power-of-two patch size, got {patch_size}.")
        layers: List[nn.Module] = []
        in_ch = 3
        for i in range(num):
            ch = width * 2**i
            layers.append(
                Conv2d(in_ch, ch, 3, stride=2, padding=1, bias=False, norm=get_norm(norm, ch))
            )
            layers.append(nn.GELU())
            for _ in range(depth):
                layers.append(Conv2d(ch, ch, 3, padding=1, bias=False, norm=get_norm(norm, ch)))
                layers.append(nn.GELU())
            in_ch = ch
        layers.append(nn.Conv2d(in_ch, out_channels, 1))
        super().__init__(*layers)


@BACKBONE_REGISTRY.register()
class D2OpenCLIPViT(Backbone):
    """The visual tower of any open_clip ViT, giving dense per-token features.

    Outputs (``out_features``), both at stride = patch size:
      - ``"emb"``: ``proj(ln_post(token))``, the per-pixel embeddings e_pxl in the joint
        image-text space, B x D x h x w.
      - ``"res"``: the last block's raw tokens, B x width x h x w (for other heads, e.g. the
        pyramid).

    Positional embeddings are interpolated (bicubic) to any input size that is a multiple of the
    patch size, which is the backbone's ``size_divisibility``.
    """

    @configurable
    def __init__(
        self,
        *,
        visual: nn.Module,
        out_features: List[str],
        conv_stem_width: int = 0,
        conv_stem_norm: str = "LN",
        conv_stem_depth: int = 0,
        grad_checkpointing: bool = False,
        freeze: bool = False,
        attention: str = "auto",
        channels_last: bool = True,
    ):
        """
        Args:
            visual: an open_clip ``VisionTransformer`` (``model.visual``).
            out_features: subset of ``["emb", "res"]``.
            conv_stem_width: > 0 replaces the patch projection by a :class:`ConvStem` of that width.
            conv_stem_norm: the stem's norm (a Detectron2 ``get_norm`` name).
            conv_stem_depth: extra stride-1 convs per stem stage.
            grad_checkpointing: recompute transformer blocks in backward to save memory.
            freeze: no gradients for any parameter (and eval-mode stem).
            attention: the attention kernel of the transformer, one of
                :data:`~vilseg_d2.modeling.attention.ATTENTION_KERNELS`.
            channels_last: run the conv stem (if any) in the channels-last memory layout, which
                oneDNN's convolutions prefer (the stem's step is about twice as fast on CPU); the
                weights and outputs are the same.
        """
        super().__init__()
        if (
            not hasattr(visual, "positional_embedding")
            or getattr(visual, "attn_pool", None) is not None
        ):
            raise ValueError(
                "D2OpenCLIPViT needs an open_clip VisionTransformer without attentional pooling."
            )
        unknown = set(out_features) - {"emb", "res"}
        if unknown or not out_features:
            raise ValueError(
                "MODEL.CLIP_VIT.OUT_FEATURES must be a non-empty subset of ['emb', 'res'], "
                f"got {out_features}."
            )
        self.visual = visual
        self.patch_size = int(visual.patch_size[0])
        self.width = int(visual.class_embedding.shape[0])
        self.embed_dim = int(visual.output_dim)
        self.grid_size: Tuple[int, int] = tuple(visual.grid_size)
        if conv_stem_width > 0:
            del self.visual.conv1
            self.conv_stem = ConvStem(
                patch_size=self.patch_size,
                width=conv_stem_width,
                out_channels=self.width,
                norm=conv_stem_norm,
                depth=conv_stem_depth,
            )
            if channels_last:
                self.conv_stem.to(memory_format=torch.channels_last)
        else:
            self.conv_stem = None
        self.channels_last = bool(channels_last and self.conv_stem is not None)
        set_attention_kernel(self.visual, attention)
        self.visual.set_grad_checkpointing(grad_checkpointing)
        self._out_features = list(out_features)
        self._out_feature_strides = {k: self.patch_size for k in out_features}
        channels = {"emb": self.embed_dim, "res": self.width}
        self._out_feature_channels = {k: channels[k] for k in out_features}
        self.frozen = freeze
        if freeze:
            for p in self.parameters():
                p.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True):
        """A frozen backbone stays in eval mode (batch-norm statistics of the stem included)."""
        return super().train(mode and not self.frozen)

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None):
        clip = create_open_clip_model(
            cfg.MODEL.OPEN_CLIP.MODEL_NAME,
            cfg.MODEL.OPEN_CLIP.PRETRAINED,
            cfg.MODEL.OPEN_CLIP.CACHE_DIR,
        )
        if input_shape is not None and input_shape.channels not in (None, 3):
            raise ValueError(
                f"D2OpenCLIPViT takes 3-channel images, got {input_shape.channels} channels."
            )
        return {
            "visual": clip.visual,
            "out_features": list(cfg.MODEL.CLIP_VIT.OUT_FEATURES),
            "conv_stem_width": (
                cfg.MODEL.CLIP_VIT.CONV_STEM_WIDTH if cfg.MODEL.CLIP_VIT.CONV_STEM else 0
            ),
            "conv_stem_norm": cfg.MODEL.CLIP_VIT.CONV_STEM_NORM,
            "conv_stem_depth": cfg.MODEL.CLIP_VIT.CONV_STEM_DEPTH,
            "grad_checkpointing": cfg.MODEL.CLIP_VIT.GRAD_CHECKPOINTING,
            "freeze": cfg.MODEL.CLIP_VIT.FREEZE,
            "attention": cfg.MODEL.OPEN_CLIP.ATTENTION,
            "channels_last": cfg.MODEL.CLIP_VIT.CHANNELS_LAST,
        }

    @property
    def size_divisibility(self) -> int:
        return self.patch_size

    @property
    def input_memory_format(self) -> torch.memory_format:
        """The layout the images are best given in (any layout works)."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding for an h x w token grid: (1 + h*w) x width.

        A traced graph (ONNX, TorchScript), whose grid is only known when it runs, always
        interpolates: bicubic to the same size returns the embeddings unchanged.
        """
        pos = self.visual.positional_embedding
        gh, gw = self.grid_size
        if not torch.jit.is_tracing() and (h, w) == (gh, gw):
            return pos
        grid = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(
            pos.dtype
        )
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)

    def forward_tokens(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Run the tower and keep everything a caller may want.

        Args:
            x: normalised images, B x 3 x H x W, H and W multiples of the patch size.

        Returns:
            dict with ``"res"`` (B x width x h x w, raw last-block tokens), ``"emb"``
            (B x D x h x w, ``proj(ln_post(token))``) and ``"cls"`` (B x D, the projected CLS
            token).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"D2OpenCLIPViT expects B x 3 x H x W images, got shape {tuple(x.shape)}."
            )
        H, W = x.shape[-2:]
        if not torch.jit.is_tracing() and (H % self.patch_size or W % self.patch_size):
            raise ValueError(
                f"Image size {H}x{W} is not a multiple of the patch size {self.patch_size}: "
                "pad the batch to backbone.size_divisibility (Detectron2's ImageList.from_tensors "
                "does)."
            )
        v = self.visual
        if self.conv_stem is not None:
            x = self.conv_stem(x.contiguous(memory_format=self.input_memory_format))
        else:
            x = v.conv1(x)  # B x width x h x w
        B, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # B x hw x width
        cls = v.class_embedding.to(x.dtype).expand(B, 1, -1)
        x = torch.cat([cls, x], dim=1) + self._pos_embed(h, w).to(x.dtype)
        x = v.ln_pre(x)
        x = v.transformer(x)  # B x (1 + hw) x width
        y = v.ln_post(x)
        if v.proj is not None:
            y = y @ v.proj  # B x (1 + hw) x D
        to_map = lambda t: t[:, 1:].transpose(1, 2).reshape(B, -1, h, w)  # noqa: E731
        return {"res": to_map(x), "emb": to_map(y), "cls": y[:, 0]}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: B x 3 x H x W normalised images (H, W multiples of ``size_divisibility``).

        Returns:
            dict of the ``out_features`` maps, each B x C x H/patch x W/patch.
        """
        out = self.forward_tokens(x)
        return {k: out[k] for k in self._out_features}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            k: ShapeSpec(
                channels=self._out_feature_channels[k], stride=self._out_feature_strides[k]
            )
            for k in self._out_features
        }


@BACKBONE_REGISTRY.register()
class D2OpenCLIPViTPyramid(SimpleFeaturePyramid):
    """ViTDet's ``SimpleFeaturePyramid`` over :class:`D2OpenCLIPViT`: FPN-style p2-p6 maps.

    With a patch-16 ViT and the default scale factors (4, 2, 1, 0.5) plus the max-pool top block,
    the outputs are ``p2``..``p6`` at strides 4..64, all ``out_channels`` wide.
    """

    @configurable
    def __init__(
        self,
        *,
        net: D2OpenCLIPViT,
        in_feature: str,
        out_channels: int,
        scale_factors: Tuple[float, ...],
        top_block: bool = True,
        norm: str = "LN",
    ):
        """
        Args:
            net: the single-scale backbone.
            in_feature: which of its outputs feeds the pyramid ("res" or "emb").
            out_channels: channels of every pyramid level.
            scale_factors: upsampling (>1) / downsampling (<1) factors, from {4, 2, 1, 0.5}.
            top_block: add one more level by max-pooling the coarsest one.
            norm: Detectron2 norm name for the pyramid convs.
        """
        block = None
        if top_block:
            block = LastLevelMaxPool()
            coarsest = int(net.output_shape()[in_feature].stride / min(scale_factors))
            block.in_feature = f"p{int(math.log2(coarsest))}"
        super().__init__(
            net, in_feature, out_channels, list(scale_factors), top_block=block, norm=norm
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None):
        in_feature = cfg.MODEL.CLIP_VIT_PYRAMID.IN_FEATURE
        net_args = D2OpenCLIPViT.from_config(cfg, input_shape)
        net_args["out_features"] = sorted(set(net_args["out_features"]) | {in_feature})
        return {
            "net": D2OpenCLIPViT(**net_args),
            "in_feature": in_feature,
            "out_channels": cfg.MODEL.CLIP_VIT_PYRAMID.OUT_CHANNELS,
            "scale_factors": tuple(cfg.MODEL.CLIP_VIT_PYRAMID.SCALE_FACTORS),
            "top_block": cfg.MODEL.CLIP_VIT_PYRAMID.TOP_BLOCK,
            "norm": cfg.MODEL.CLIP_VIT_PYRAMID.NORM,
        }


def check_training_backbone(backbone: Backbone, cfg) -> None:
    """Raise a ``ValueError`` saying what to change unless ``backbone`` can train ViL-Seg with
    ``cfg``'s views: a :class:`D2OpenCLIPViT` with the ``emb`` output, and view sizes
    (``INPUT.VILSEG.GLOBAL_SIZE`` / ``LOCAL_SIZE``) that are multiples of its patch."""
    if not isinstance(backbone, D2OpenCLIPViT):
        raise ValueError(
            "ViLSeg needs MODEL.BACKBONE.NAME = 'D2OpenCLIPViT', "
            f"got {cfg.MODEL.BACKBONE.NAME!r}."
        )
    if "emb" not in backbone.output_shape():
        raise ValueError(
            "ViLSeg needs the backbone's 'emb' output: include it in MODEL.CLIP_VIT.OUT_FEATURES."
        )
    patch = backbone.size_divisibility
    for key in ("GLOBAL_SIZE", "LOCAL_SIZE"):
        size = cfg.INPUT.VILSEG[key]
        if size % patch:
            raise ValueError(
                f"INPUT.VILSEG.{key}={size} is not a multiple of the backbone's patch size "
                f"{patch}; use e.g. {max(patch, round(size / patch) * patch)}."
            )
