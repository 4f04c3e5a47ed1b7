"""``ViLSeg``: the meta-architecture of the paper. Training: image -> views -> backbone -> heads ->
objectives (:class:`ViLSegCriterion`); inference: image -> backbone -> segments
(:class:`ViLSegSegmenter`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from torch import nn

from .backbone.clip_vit import D2OpenCLIPViT, check_training_backbone
from .criterion import ViLSegCriterion, current_storage
from .inputs import inference_image
from .projection_head import ViLSegProjectionHead
from .segmenter import PixelEncoder, SegmenterSettings, ViLSegSegmenter
from .teacher import MomentumTeacher
from .text_encoder import ViLSegTextEncoder
from .vocabulary import (
    background_index,
    dataset_vocabulary,
    input_vocabulary,
    to_vocabulary_order,
)

__all__ = ["ViLSeg", "pixel_encoder"]


def pixel_encoder(
    backbone: D2OpenCLIPViT, clustering_head: nn.Module, logit_scale: torch.Tensor
) -> PixelEncoder:
    """What the segmenter takes from ViL-Seg's networks (also what an exported graph runs).

    Args:
        backbone: gives the pixel embeddings (its ``"emb"`` tokens).
        clustering_head: Phi_c (its logits, before the softmax).
        logit_scale: 1/tau.
    """
    return PixelEncoder(
        embed=lambda x: backbone.forward_tokens(x)["emb"],
        cluster_logits=lambda emb: clustering_head.layers({clustering_head.in_feature: emb})[0],
        patch=backbone.size_divisibility,
        logit_scale=logit_scale,
    )


@META_ARCH_REGISTRY.register()
class ViLSeg(SegmenterSettings, nn.Module):
    """ViL-Seg: image encoder + text encoder trained with vision-based contrast (L_vision),
    cross-modal contrast (L_cross) and online clustering by mutual information (L_cluster).

    Training input: a list of dicts with ``image`` (global view, 3 x S x S uint8), ``local_crops``
    (V tensors 3 x s x s), ``transformed_image`` (g(image), 3 x S x S), ``flip`` (bool) and
    ``caption`` (str). Returns ``{"loss_vision", "loss_cross", "loss_cluster"}`` from the
    :class:`ViLSegCriterion`, each already multiplied by its weight in force at the training
    iteration; a weight of 0 drops the loss and skips its computation.

    Inference input: Detectron2's usual dicts (``image`` 3 x H x W, optional ``height``/``width``)
    plus optionally ``vocabulary`` (list of class names) or ``dataset_name`` (its classes, as
    their ``prompt_names``); otherwise the model's default vocabulary (:meth:`set_vocabulary`).
    Grayscale images (1 x H x W or H x W) are repeated to 3 channels, ``torch.uint16`` images
    scaled to 0-255; any size works (images smaller than a patch are padded to it); other
    shapes, 4 channels and values above 255 raise a ``ValueError`` saying what to pass.
    Output per image: ``{"sem_seg": K x height x width class probabilities (with mask
    refinement, the refined label map's class vote shares), "clusters": height x width long
    cluster ids (dense: class ids)}``. The inference settings are the segmenter's, also
    readable and settable here (``model.inference_mode = "kmeans"``).
    """

    _version = 2  # 1: DINO's center and a step count were the model's (see _load_from_state_dict)

    @configurable
    def __init__(
        self,
        *,
        backbone: D2OpenCLIPViT,
        text_encoder: ViLSegTextEncoder,
        clustering_head: nn.Module,
        projection_head: ViLSegProjectionHead,
        criterion: ViLSegCriterion,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        segmenter: Optional[ViLSegSegmenter] = None,
        teacher: Optional[MomentumTeacher] = None,
        init_logit_scale: float = 1 / 0.07,
        max_logit_scale: float = 100.0,
        detach_cluster_encoder: bool = False,
        global_pool: str = "mean",
        vocabulary: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            backbone: a :class:`D2OpenCLIPViT` (needs ``forward_tokens``).
            text_encoder: the open_clip text tower.
            clustering_head: Phi_c, e.g. :class:`ViLSegClusteringHead`.
            projection_head: Phi_a.
            criterion: the objectives, their weights and state (:class:`ViLSegCriterion`).
            pixel_mean, pixel_std: per-channel normalisation in the input's channel order.
            segmenter: the inference (default: ``online`` with the head's C, nothing else).
            teacher: L_vision's teacher of the global view: None = the network itself without
                gradient (the paper's eq. 2), or a :class:`MomentumTeacher` (DINO's), which a
                training hook updates after every step.
            init_logit_scale, max_logit_scale: CLIP's learnable 1/tau, initial value and clamp.
            detach_cluster_encoder: stop L_cluster's gradient at the encoder.
            global_pool: "mean" of the pixel embeddings (paper) or "cls".
            vocabulary: default class names for inference.
        """
        super().__init__()
        if global_pool not in ("mean", "cls"):
            raise ValueError(
                f"MODEL.VILSEG.GLOBAL_POOL must be 'mean' or 'cls', got {global_pool!r}."
            )
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.clustering_head = clustering_head
        self.projection_head = projection_head
        self.criterion = criterion
        self.teacher = teacher
        self.segmenter = segmenter or ViLSegSegmenter(num_clusters=clustering_head.num_clusters)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)))
        self.max_logit_scale = max_logit_scale
        self.detach_cluster_encoder = detach_cluster_encoder
        self.global_pool = global_pool
        self.vocabulary = list(vocabulary) if vocabulary else None
        # An ablated branch's parameters get no gradient: freeze them (DDP needs every trainable
        # parameter to receive one).
        weights = criterion.weight_dict
        for part, key in ((projection_head, "loss_vision"), (clustering_head, "loss_cluster")):
            part.requires_grad_(weights[key] > 0)
        if weights["loss_cross"] == 0:
            text_encoder.requires_grad_(False)
            self.logit_scale.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        # First, before any weights are read: a misspelt or unregistered DATASETS.TEST[0].
        vocabulary = dataset_vocabulary(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
        backbone = build_backbone(cfg)
        check_training_backbone(backbone, cfg)
        v = cfg.MODEL.VILSEG
        text_encoder = ViLSegTextEncoder(cfg)
        init_logit_scale = v.INIT_LOGIT_SCALE
        if cfg.MODEL.OPEN_CLIP.PRETRAINED and text_encoder.clip_logit_scale is not None:
            init_logit_scale = text_encoder.clip_logit_scale  # the pretrained towers' own 1/tau
        projection_head = ViLSegProjectionHead(cfg, in_dim=backbone.embed_dim)
        return {
            "backbone": backbone,
            "text_encoder": text_encoder,
            "clustering_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "projection_head": projection_head,
            "criterion": ViLSegCriterion(cfg),
            "segmenter": ViLSegSegmenter(cfg),
            "teacher": MomentumTeacher.from_config(cfg, backbone, projection_head),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "init_logit_scale": init_logit_scale,
            "max_logit_scale": v.MAX_LOGIT_SCALE,
            "detach_cluster_encoder": v.DETACH_CLUSTER_ENCODER,
            "global_pool": v.GLOBAL_POOL,
            "vocabulary": vocabulary,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def num_clusters(self) -> int:
        return self.clustering_head.num_clusters

    @property
    def has_background(self) -> bool:
        """Whether the background rules are on: the vocabulary's "background" class is found by
        them."""
        return self.segmenter.has_background

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Set the default vocabulary used when an input names none."""
        self.vocabulary = list(class_names)

    def scale(self) -> torch.Tensor:
        """The exponentiated, clamped logit scale 1/tau."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        return self.losses(batched_inputs)

    # ------------------------------------------------------------------ training

    def _normalize(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack equally sized uint8/float CHW images and normalise: N x 3 x H x W float."""
        x = torch.stack([im.to(self.device, non_blocking=True) for im in images])
        layout = getattr(self.backbone, "input_memory_format", torch.contiguous_format)
        # stack made a new tensor: normalised in place (one pass less over the batch)
        x = x.to(dtype=torch.float32, memory_format=layout)
        return x.sub_(self.pixel_mean).div_(self.pixel_std)

    def _global_embedding(self, tokens: Dict[str, torch.Tensor]) -> torch.Tensor:
        """e_v, N x D: mean of the pixel embeddings (paper) or the CLS embedding."""
        if self.global_pool == "cls":
            return tokens["cls"]
        return tokens["emb"].mean(dim=(2, 3))

    def losses(
        self, batched_inputs: List[Dict], iteration: Optional[int] = None
    ) -> Dict[str, torch.Tensor]:
        """The weighted objectives for one batch (see the class docstring for the inputs).

        Args:
            batched_inputs: the training dicts.
            iteration: the training step, which sets the criterion's schedules; default: the
                iteration of the current Detectron2 ``EventStorage`` (the trainer's ``iter``),
                0 outside one.
        """
        if iteration is None:  # the trainer's
            iteration = 0 if current_storage() is None else int(current_storage().iter)
        weights = self.criterion.weights(iteration)
        batch = len(batched_inputs)
        views = [x["image"] for x in batched_inputs]
        if "loss_cluster" in weights:
            views += [x["transformed_image"] for x in batched_inputs]
        images = self._normalize(views)
        tokens = self.backbone.forward_tokens(images)
        global_emb = self._global_embedding(tokens)[:batch]  # B x D
        outputs: Dict[str, torch.Tensor] = {}
        if "loss_cross" in weights:
            outputs["image_emb"] = global_emb
            outputs["text_emb"] = self.text_encoder([x["caption"] for x in batched_inputs])  # B x D
            outputs["logit_scale"] = self.scale()
        if "loss_vision" in weights:
            outputs["student"], outputs["teacher"] = self._projected_views(
                batched_inputs, images[:batch], global_emb
            )
        if "loss_cluster" in weights:
            outputs["clusters"], outputs["clusters_tf"] = self._cluster_views(
                batched_inputs, tokens["emb"]
            )
        losses = self.criterion(outputs, iteration)
        storage = current_storage()
        if storage is not None:
            storage.put_scalar("logit_scale", float(self.scale().detach()), smoothing_hint=False)
        return losses

    def _projected_views(
        self, batched_inputs: List[Dict], global_images: torch.Tensor, global_emb: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Phi_a of the local views (student, V x B x P) and of the global view (teacher, B x P).

        Args:
            global_images: B x 3 x S x S normalised global views.
            global_emb: B x D, their embeddings e_v (the network's own teacher takes them).
        """
        batch = len(batched_inputs)
        num_views = len(batched_inputs[0]["local_crops"])
        if num_views == 0 or any(len(x["local_crops"]) != num_views for x in batched_inputs):
            raise ValueError("Every training input needs the same, non-zero number of local_crops.")
        # view-major: the V crops of the batch, view after view
        crops = [x["local_crops"][v] for v in range(num_views) for x in batched_inputs]
        local_emb = self._global_embedding(self.backbone.forward_tokens(self._normalize(crops)))
        student = self.projection_head(local_emb).view(num_views, batch, -1)
        if self.teacher is None:
            return student, self.projection_head(global_emb).detach()
        return student, self.teacher(global_images, self._global_embedding)

    def _cluster_views(
        self, batched_inputs: List[Dict], emb: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Phi_c of the image and of g(image) with g's flip undone: two B x C x h x w.

        Args:
            emb: 2B x D x h x w pixel embeddings of the images, then of their transformed views.
        """
        batch = len(batched_inputs)
        if self.detach_cluster_encoder:
            emb = emb.detach()
        probs = self.clustering_head({self.clustering_head.in_feature: emb})  # 2B x C x h x w
        p, p_tf = probs[:batch], probs[batch:]
        flips = torch.tensor([bool(x["flip"]) for x in batched_inputs], device=probs.device)
        return p, torch.where(flips.view(-1, 1, 1, 1), p_tf.flip(-1), p_tf)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Version 1 (before the criterion had its own module) kept DINO's center as ``center``
        # and a step count ``num_updates`` (the trainer's iteration now drives the schedules).
        if local_metadata.get("version", 1) < 2:
            if prefix + "center" in state_dict:
                state_dict[prefix + "criterion.center"] = state_dict.pop(prefix + "center")
            state_dict.pop(prefix + "num_updates", None)
        if self.teacher is not None:
            self.teacher.fill_missing(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Segment each image with its vocabulary; see the class docstring."""
        encoder = pixel_encoder(self.backbone, self.clustering_head, self.scale())
        results = []
        for x in batched_inputs:
            vocab = input_vocabulary(x, self.vocabulary)
            background = background_index(vocab, self.segmenter)
            named = [c for i, c in enumerate(vocab) if i != background]
            text = self.text_encoder.class_embeddings(named)
            image = self._normalize([inference_image(x["image"])])[0]  # 3 x H x W
            H, W = image.shape[-2:]
            size = (x.get("height", H), x.get("width", W))
            sem_seg, clusters = self.segmenter.segment(image, text, encoder, size)
            results.append(
                {"sem_seg": to_vocabulary_order(sem_seg, background), "clusters": clusters}
            )
        return results
