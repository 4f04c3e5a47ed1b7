"""``ViLSeg``: the meta-architecture of the paper (training objectives and the three inference modes)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from .backbone.clip_vit import D2OpenCLIPViT
from .criterion import ViLSegCriterion
from .kmeans import kmeans
from .mask_refinement import check_dilations, local_affinity, refine_masks
from .projection_head import ViLSegProjectionHead
from .teacher import MomentumTeacher
from .text_encoder import ViLSegTextEncoder

__all__ = ["ViLSeg"]

logger = logging.getLogger(__name__)

INFERENCE_MODES = ("online", "kmeans", "dense")
T = TypeVar("T")
Sizes = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]


class ImageRegions(NamedTuple):
    """An image's vocabulary- and rule-independent inference features (see ``ViLSeg._image_regions``).

    Attributes:
        image_emb: D, the unit-norm image embedding e_v (mean of the pixel embeddings).
        sizes: ((Hp, Wp) padded input, (H, W) input, (height, width) output).
        emb: hw x D unit-norm pixel embeddings ("dense" only).
        grid: (h, w) token grid ("dense" only).
        region: C x D unit-norm region embeddings ("online", "kmeans").
        assign: height x width long cluster ids ("online", "kmeans").
    """

    image_emb: torch.Tensor
    sizes: Sizes
    emb: Optional[torch.Tensor] = None
    grid: Optional[Tuple[int, int]] = None
    region: Optional[torch.Tensor] = None
    assign: Optional[torch.Tensor] = None


@META_ARCH_REGISTRY.register()
class ViLSeg(nn.Module):
    """ViL-Seg: image encoder + text encoder trained with vision-based contrast (L_vision),
    cross-modal contrast (L_cross) and online clustering by mutual information (L_cluster).

    Training input: a list of dicts with ``image`` (global view, 3 x S x S uint8), ``local_crops``
    (V tensors 3 x s x s), ``transformed_image`` (g(image), 3 x S x S), ``flip`` (bool) and
    ``caption`` (str). Returns ``{"loss_vision", "loss_cross", "loss_cluster"}`` from the
    :class:`ViLSegCriterion`, each already multiplied by its weight in force at the training
    iteration; a weight of 0 drops the loss and skips its computation.

    Inference input: Detectron2's usual dicts (``image`` 3 x H x W, optional ``height``/``width``)
    plus optionally ``vocabulary`` (list of class names) or ``dataset_name`` (its metadata's
    ``stuff_classes``); otherwise the model's default vocabulary (:meth:`set_vocabulary`).
    Grayscale images (1 x H x W or H x W) are repeated to 3 channels, ``torch.uint16`` images
    scaled to 0-255; any size works (images smaller than a patch are padded to it); other
    shapes, 4 channels and values above 255 raise a ``ValueError`` saying what to pass.
    Output per image: ``{"sem_seg": K x height x width class probabilities (with mask
    refinement, the refined label map's class vote shares), "clusters": height x width long
    cluster ids (dense: class ids)}``.
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
        init_logit_scale: float = 1 / 0.07,
        max_logit_scale: float = 100.0,
        detach_cluster_encoder: bool = False,
        teacher: Optional[MomentumTeacher] = None,
        global_pool: str = "mean",
        inference_mode: str = "online",
        kmeans_iters: int = 20,
        kmeans_seed: int = 0,
        bg_threshold: float = 0.0,
        bg_global_similarity: float = 0.0,
        sliding_window_size: int = 0,
        sliding_window_stride: int = 0,
        refine_iters: int = 0,
        refine_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
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
            init_logit_scale, max_logit_scale: CLIP's learnable 1/tau, initial value and clamp.
            detach_cluster_encoder: stop L_cluster's gradient at the encoder.
            teacher: L_vision's teacher of the global view: None = the network itself without
                gradient (the paper's eq. 2), or a :class:`MomentumTeacher` (DINO's), which a
                training hook updates after every step.
            global_pool: "mean" of the pixel embeddings (paper) or "cls".
            inference_mode: "online", "kmeans" or "dense".
            kmeans_iters, kmeans_seed: the K-means baseline's settings.
            bg_threshold: > 0 makes class 0 of the vocabulary the background: it is not matched
                by text, and gets every pixel whose best class probability is below the threshold.
            bg_global_similarity: > 0 also makes class 0 the background, and gives it every
                pixel ("dense") or region ("online", "kmeans") whose embedding has at least this
                cosine similarity with the image's embedding (the mean of its pixel embeddings,
                e_v of the paper). Training matches e_v to the caption, and the background,
                most of the image, carries that image-level summary; objects stand out from it.
            sliding_window_size, sliding_window_stride: > 0 segments images larger than the window
                window by window, averaging the class probabilities where windows overlap.
            refine_iters, refine_dilations: > 0 refines each image's label map with that many
                steps of pixel-adaptive mask refinement (:func:`refine_masks`, PAMR with TCL's
                steps and dilations); ``sem_seg`` is then the class vote shares of the refined
                label map, and ``clusters`` stay the unrefined clusters (dense: the refined
                class ids).
            vocabulary: default class names for inference.
        """
        super().__init__()
        if global_pool not in ("mean", "cls"):
            raise ValueError(f"MODEL.VILSEG.GLOBAL_POOL must be 'mean' or 'cls', got {global_pool!r}.")
        if inference_mode not in INFERENCE_MODES:
            raise ValueError(f"MODEL.VILSEG.INFERENCE_MODE must be one of {INFERENCE_MODES}, got {inference_mode!r}.")
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.clustering_head = clustering_head
        self.projection_head = projection_head
        self.criterion = criterion
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)))
        self.max_logit_scale = max_logit_scale
        self.detach_cluster_encoder = detach_cluster_encoder
        self.teacher = teacher
        self.global_pool = global_pool
        self.inference_mode = inference_mode
        self.kmeans_iters = kmeans_iters
        self.kmeans_seed = kmeans_seed
        self.bg_threshold = bg_threshold
        self.bg_global_similarity = bg_global_similarity
        self.sliding_window_size = sliding_window_size
        self.sliding_window_stride = sliding_window_stride or max(sliding_window_size * 2 // 3, 1)
        if refine_iters < 0:
            raise ValueError(f"MODEL.VILSEG.REFINE_ITERS must be >= 0, got {refine_iters}.")
        try:
            check_dilations(refine_dilations)
        except ValueError as e:
            raise ValueError(f"MODEL.VILSEG.REFINE_DILATIONS: {e}") from None
        self.refine_iters = refine_iters
        self.refine_dilations = tuple(int(d) for d in refine_dilations)
        self.vocabulary = list(vocabulary) if vocabulary else None
        self._image_cache: Optional[Dict[tuple, object]] = None  # see reuse_image_features
        # An ablated branch's parameters get no gradient: freeze them (DDP needs every trainable
        # parameter to receive one).
        weights = criterion.weight_dict
        unused = []
        if weights["loss_vision"] == 0:
            unused.append(self.projection_head)
        if weights["loss_cluster"] == 0:
            unused.append(self.clustering_head)
        if weights["loss_cross"] == 0:
            unused += [self.text_encoder, self.logit_scale]
        for part in unused:
            for p in [part] if isinstance(part, nn.Parameter) else part.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        if not isinstance(backbone, D2OpenCLIPViT):
            raise ValueError(f"ViLSeg needs MODEL.BACKBONE.NAME = 'D2OpenCLIPViT', got {cfg.MODEL.BACKBONE.NAME!r}.")
        if "emb" not in backbone.output_shape():
            raise ValueError("ViLSeg needs the backbone's 'emb' output: include it in MODEL.CLIP_VIT.OUT_FEATURES.")
        patch = backbone.size_divisibility
        for key in ("GLOBAL_SIZE", "LOCAL_SIZE"):
            size = cfg.INPUT.VILSEG[key]
            if size % patch:
                raise ValueError(
                    f"INPUT.VILSEG.{key}={size} is not a multiple of the backbone's patch size {patch}; "
                    f"use e.g. {max(patch, round(size / patch) * patch)}."
                )
        vocabulary = None
        if cfg.DATASETS.TEST:
            vocabulary = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("stuff_classes", None)
        v = cfg.MODEL.VILSEG
        text_encoder = ViLSegTextEncoder(cfg)
        projection_head = ViLSegProjectionHead(cfg, in_dim=backbone.embed_dim)
        if v.TEACHER not in ("self", "ema"):
            raise ValueError(f"MODEL.VILSEG.TEACHER must be 'self' or 'ema', got {v.TEACHER!r}.")
        teacher = None
        if v.TEACHER == "ema" and v.VISION_WEIGHT > 0:
            teacher = MomentumTeacher(backbone, projection_head, base_momentum=v.TEACHER_MOMENTUM,
                                      start_iter=int(v.AUX_WARMUP_ITERS[0]), max_iter=cfg.SOLVER.MAX_ITER)  # fmt: skip
        init_logit_scale = v.INIT_LOGIT_SCALE
        if cfg.MODEL.OPEN_CLIP.PRETRAINED and text_encoder.clip_logit_scale is not None:
            init_logit_scale = text_encoder.clip_logit_scale  # the pretrained towers' own 1/tau
        return {
            "backbone": backbone,
            "text_encoder": text_encoder,
            "clustering_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "projection_head": projection_head,
            "criterion": ViLSegCriterion(cfg),
            "teacher": teacher,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "init_logit_scale": init_logit_scale,
            "max_logit_scale": v.MAX_LOGIT_SCALE,
            "detach_cluster_encoder": v.DETACH_CLUSTER_ENCODER,
            "global_pool": v.GLOBAL_POOL,
            "inference_mode": v.INFERENCE_MODE,
            "kmeans_iters": v.KMEANS_ITERS,
            "kmeans_seed": v.KMEANS_SEED,
            "bg_threshold": v.BG_THRESHOLD,
            "bg_global_similarity": v.BG_GLOBAL_SIMILARITY,
            "sliding_window_size": v.SLIDING_WINDOW_SIZE,
            "sliding_window_stride": v.SLIDING_WINDOW_STRIDE,
            "refine_iters": v.REFINE_ITERS,
            "refine_dilations": tuple(v.REFINE_DILATIONS),
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
        """Whether class 0 of a vocabulary is the background, found without its text."""
        return self.bg_threshold > 0 or self.bg_global_similarity > 0

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Set the default vocabulary used when an input names none."""
        self.vocabulary = list(class_names)

    def scale(self) -> torch.Tensor:
        """The exponentiated, clamped logit scale 1/tau."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    # ------------------------------------------------------------------ training

    def _normalize(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack equally sized uint8/float CHW images and normalise: N x 3 x H x W float."""
        x = torch.stack([im.to(self.device, non_blocking=True) for im in images]).float()
        return (x - self.pixel_mean) / self.pixel_std

    def _global_embedding(self, tokens: Dict[str, torch.Tensor]) -> torch.Tensor:
        """e_v, N x D: mean of the pixel embeddings (paper) or the CLS embedding."""
        if self.global_pool == "cls":
            return tokens["cls"]
        return tokens["emb"].mean(dim=(2, 3))

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        return self.losses(batched_inputs)

    def losses(self, batched_inputs: List[Dict], iteration: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """The weighted objectives for one batch (see the class docstring for the inputs).

        Args:
            batched_inputs: the training dicts.
            iteration: the training step, which sets the criterion's schedules; default: the
                iteration of the current Detectron2 ``EventStorage`` (the trainer's ``iter``),
                0 outside one.
        """
        if iteration is None:
            iteration = _storage_iteration()
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
            outputs["student"], outputs["teacher"] = self._projected_views(batched_inputs, images[:batch], global_emb)
        if "loss_cluster" in weights:
            outputs["clusters"], outputs["clusters_tf"] = self._cluster_views(batched_inputs, tokens["emb"])
        losses = self.criterion(outputs, iteration)
        self._log_scalars()
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
        crops = [x["local_crops"][v] for v in range(num_views) for x in batched_inputs]  # view-major
        local_emb = self._global_embedding(self.backbone.forward_tokens(self._normalize(crops)))
        student = self.projection_head(local_emb).view(num_views, batch, -1)
        if self.teacher is None:
            return student, self.projection_head(global_emb).detach()
        with torch.no_grad():
            teacher_emb = self._global_embedding(self.teacher.backbone.forward_tokens(global_images))
            return student, self.teacher.projection_head(teacher_emb)

    def _cluster_views(self, batched_inputs: List[Dict], emb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
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

    def _log_scalars(self) -> None:
        try:
            storage = get_event_storage()
        except AssertionError:  # not inside a trainer
            return
        storage.put_scalar("logit_scale", float(self.scale().detach()), smoothing_hint=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Version 1 (before the criterion had its own module) kept DINO's center as ``center``
        # and a step count ``num_updates`` (the trainer's iteration now drives the schedules).
        if local_metadata.get("version", 1) < 2:
            if prefix + "center" in state_dict:
                state_dict[prefix + "criterion.center"] = state_dict.pop(prefix + "center")
            state_dict.pop(prefix + "num_updates", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # ------------------------------------------------------------------ inference

    def _vocabulary(self, x: Dict) -> List[str]:
        if x.get("vocabulary"):
            return list(x["vocabulary"])
        if x.get("dataset_name"):
            classes = MetadataCatalog.get(x["dataset_name"]).get("stuff_classes", None)
            if classes:
                return list(classes)
        if self.vocabulary:
            return self.vocabulary
        raise ValueError(
            "No vocabulary: give the input a 'vocabulary' list, a 'dataset_name' with stuff_classes, "
            "or call model.set_vocabulary([...]) / set DATASETS.TEST."
        )

    @staticmethod
    def _input_image(image) -> torch.Tensor:
        """An inference input's ``image`` as a 3 x H x W tensor of 0-255 values.

        Raises:
            ValueError: a shape, channel count or value range the model cannot take, with
                what to pass instead.
        """
        image = torch.as_tensor(image)
        if image.dim() == 2:  # H x W grayscale
            image = image[None]
        shape = tuple(image.shape)
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            hint = ""
            if image.dim() == 3 and image.shape[-1] in (1, 3, 4):
                hint = " It looks channels-last (H x W x C): pass image.permute(2, 0, 1)."
            elif image.dim() == 3 and image.shape[0] == 4:
                hint = (
                    " Remove the alpha channel first: composite it (vilseg_d2.data.image_io.decode_image "
                    "reads image files with alpha over white) or drop it (image[:3])."
                )
            raise ValueError(
                f"'image' must be 3 x H x W (channels in INPUT.FORMAT order) or grayscale 1 x H x W / "
                f"H x W, got shape {shape}.{hint}"
            )
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"'image' is empty (shape {shape}).")
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if image.dtype == torch.uint16:  # 16-bit: 65535 -> 255
            return image.float() / 257.0
        if image.dtype != torch.uint8:
            top = float(image.max())
            if not math.isfinite(top) or top > 256:
                raise ValueError(
                    f"'image' has values up to {top:g}; the model takes 0-255 pixel values. Scale "
                    f"16-bit data to 8 bits (divide by 257) or pass it as a torch.uint16 tensor."
                )
        return image

    @contextlib.contextmanager
    def reuse_image_features(self) -> Iterator[None]:
        """Reuse each image's vocabulary- and rule-independent features within the block.

        Inside the block, inference computes once per image (and inference mode and output size)
        the pixel embeddings, the clusters with their region embeddings, and the mask
        refinement's colour affinities; scoring the same images again under other vocabularies
        or background rules (``bg_threshold``, ``bg_global_similarity``) repeats only the
        scoring and the refinement's propagation. ``tools/run_demo.py`` chooses its background
        rules this way. Images are recognised by their content.

        The weights and the other settings must not change inside the block. Everything is
        kept until the block ends: per image, about 4 * 8 * len(REFINE_DILATIONS) bytes per
        pixel for the affinities (3 MB at 128 x 128 with the default dilations; 50 MB at
        512 x 512) and 8 bytes per output pixel for the cluster ids. Meant for small sets of
        images scored many times, not for a whole evaluation.

        Yields:
            None. Example::

                with model.reuse_image_features():
                    for rule in rules:
                        model.bg_threshold = rule
                        outputs = model(inputs)
        """
        outer = self._image_cache
        self._image_cache = {} if outer is None else outer
        try:
            yield
        finally:
            self._image_cache = outer

    def _memo(self, kind: str, image: torch.Tensor, compute: Callable[[], T], key: tuple) -> T:
        """Inside :meth:`reuse_image_features`, the value of ``compute()`` stored for this
        ``kind``, image content (any shape), ``key``, device and autocast state; else ``compute()``."""
        if self._image_cache is None:
            return compute()
        content = hashlib.blake2b(image.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16)
        full_key = (kind, tuple(image.shape), content.digest(), str(image.device),
                    torch.is_autocast_enabled(image.device.type), *key)  # fmt: skip
        if full_key not in self._image_cache:
            self._image_cache[full_key] = compute()
        return self._image_cache[full_key]

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Segment each image with its vocabulary; see the class docstring."""
        results = []
        for x in batched_inputs:
            vocab = self._vocabulary(x)
            text = self.text_encoder.class_embeddings(vocab[1:] if self.has_background else vocab)
            image = self._normalize([self._input_image(x["image"])])[0]  # 3 x H x W
            H, W = image.shape[-2:]
            output_size = (x.get("height", H), x.get("width", W))
            if self.refine_iters:  # refined at the input's size, where image and maps align
                sem_seg, clusters = self.segment(image, text)
                dilations = self.refine_dilations
                affinity = self._memo("affinity", image, lambda: local_affinity(image, dilations=dilations), dilations)
                sem_seg = refine_masks(
                    image, sem_seg, iterations=self.refine_iters, dilations=dilations, affinity=affinity
                )
                if self.inference_mode == "dense":  # its "clusters" are the class ids
                    clusters = sem_seg.argmax(0)
                if output_size != (H, W):
                    sem_seg = sem_seg_postprocess(sem_seg, (H, W), *output_size)
                    clusters = F.interpolate(clusters[None, None].float(), size=output_size, mode="nearest")[0, 0].long()
            else:
                sem_seg, clusters = self.segment(image, text, output_size)
            results.append({"sem_seg": sem_seg, "clusters": clusters})
        return results

    def segment(
        self, image: torch.Tensor, text: torch.Tensor, output_size: Optional[Tuple[int, int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Segment one normalised image, whole or window by window.

        Args:
            image: 3 x H x W normalised image.
            text: K' x D unit-norm class embeddings (K' = K - 1 with a background threshold).
            output_size: (height, width) of the result, default (H, W), reached with Detectron2's
                ``sem_seg_postprocess``; the clustering modes resize their C cluster logits and
                then look up the class scores, rather than resizing K score maps.

        Returns:
            (K x height x width class probabilities, height x width long cluster ids; for
            "dense", the class ids).
        """
        H, W = image.shape[-2:]
        output_size = tuple(output_size or (H, W))
        size, stride = self.sliding_window_size, self.sliding_window_stride
        if size <= 0 or (H <= size and W <= size):
            return self._segment_whole(image, text, output_size)
        scores = None
        count = image.new_zeros(1, H, W)
        clusters = torch.zeros(H, W, dtype=torch.long, device=image.device)
        for y0, y1 in _windows(H, size, stride):
            for x0, x1 in _windows(W, size, stride):
                s, c = self._segment_whole(image[:, y0:y1, x0:x1], text, (y1 - y0, x1 - x0))
                if scores is None:
                    scores = s.new_zeros(s.shape[0], H, W)
                scores[:, y0:y1, x0:x1] += s
                count[:, y0:y1, x0:x1] += 1
                clusters[y0:y1, x0:x1] = c
        scores = scores / count
        if output_size != (H, W):
            scores = sem_seg_postprocess(scores, (H, W), *output_size)
            clusters = F.interpolate(clusters[None, None].float(), size=output_size, mode="nearest")[0, 0].long()
        return scores, clusters

    def _segment_whole(
        self, image: torch.Tensor, text: torch.Tensor, output_size: Tuple[int, int]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Segment one normalised image (3 x H x W) without sliding windows; see :meth:`segment`."""
        key = (self.inference_mode, self.kmeans_iters, self.kmeans_seed, tuple(output_size))
        regions = self._memo("regions", image, lambda: self._image_regions(image, output_size), key)
        return self._score_regions(regions, text)

    def _image_regions(self, image: torch.Tensor, output_size: Tuple[int, int]) -> ImageRegions:
        """What segmenting an image takes that neither the vocabulary nor the background rules
        change: the pixel embeddings ("dense"), or the regions ("online", "kmeans").

        Args:
            image: 3 x H x W normalised image.
            output_size: (height, width) of the segmentation.
        """
        H, W = image.shape[-2:]
        patch = self.backbone.size_divisibility
        padded = ImageList.from_tensors([image], size_divisibility=patch).tensor  # 1 x 3 x Hp x Wp
        emb = self.backbone.forward_tokens(padded)["emb"].float()  # 1 x D x h x w
        h, w = emb.shape[-2:]
        emb_flat = F.normalize(emb[0].flatten(1).t(), dim=-1)  # hw x D
        image_emb = F.normalize(emb[0].mean(dim=(1, 2)), dim=0)  # D, e_v
        sizes = (tuple(padded.shape[-2:]), (H, W), tuple(output_size))
        if self.inference_mode == "dense":
            return ImageRegions(image_emb=image_emb, sizes=sizes, emb=emb_flat, grid=(h, w))
        if self.inference_mode == "online":
            cluster_logits = self.clustering_head.layers({self.clustering_head.in_feature: emb})[0].float()
        else:  # kmeans on the unit-norm embeddings; logits = -squared distance to the centroids
            _, centroids = kmeans(emb_flat, self.num_clusters, self.kmeans_iters, self.kmeans_seed)
            cluster_logits = -torch.cdist(emb_flat, centroids).pow(2).t().reshape(-1, h, w)
        num_clusters = cluster_logits.shape[0]

        # Region features (paper: e_rgn = mean of e_pxl over M_c), from token-level assignments;
        # a cluster that only wins after upsampling falls back to its soft-weighted mean.
        token_assign = cluster_logits.flatten(1).max(0).indices  # hw
        weights = F.one_hot(token_assign, num_clusters).float()  # hw x C
        empty = weights.sum(0) == 0
        weights[:, empty] = cluster_logits.flatten(1).t().softmax(-1)[:, empty]
        region = F.normalize(weights.t() @ emb_flat, dim=-1)  # C x D
        # Pixel-level assignment from the upsampled cluster logits; each pixel takes its region's scores.
        assign = _to_output(cluster_logits, sizes).max(0).indices  # height x width
        return ImageRegions(image_emb=image_emb, sizes=sizes, region=region, assign=assign)

    def _score_regions(self, regions: ImageRegions, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Score an image's pixels or regions against the vocabulary, with the background rules.

        Args:
            regions: from :meth:`_image_regions`.
            text: K' x D unit-norm class embeddings.

        Returns:
            (K x height x width class probabilities, height x width long cluster ids; for
            "dense", the class ids).
        """
        sizes = regions.sizes
        if self.inference_mode == "dense":
            emb, grid = regions.emb, regions.grid
            logits = (self.scale() * (emb @ text.t())).t().reshape(-1, *grid)  # K' x h x w
            similarity = None
            if self.bg_global_similarity > 0:
                similarity = _to_output((emb @ regions.image_emb).view(1, *grid), sizes)[0]  # height x width
            probs = self._with_background(_to_output(logits, sizes).softmax(0), similarity)
            return probs, probs.max(0).indices

        region = regions.region
        region_probs = (self.scale() * region @ text.t()).softmax(-1).t()  # K' x C
        region_probs = self._with_background(region_probs, region @ regions.image_emb)  # K x C
        # Written pixel-major (height x width x K, returned as a K x height x width view): a row copy
        # per pixel instead of a strided gather per class, and argmax over the classes, which is
        # what every consumer does, reads contiguous memory. Measured at 448 x 448 with K = 1000:
        # 0.48 s against 0.65 s to write, 0.14 s against 0.73 s for the evaluator's argmax.
        scores = F.embedding(regions.assign, region_probs.t()).permute(2, 0, 1)  # K x height x width view
        # A stored assignment is handed out as a copy, so that no caller can change it.
        assign = regions.assign if self._image_cache is None else regions.assign.clone()
        return scores, assign

    def _with_background(self, probs: torch.Tensor, image_similarity: Optional[torch.Tensor]) -> torch.Tensor:
        """Prepend the background (class 0) when the model has one.

        Args:
            probs: K' x N... probabilities of the named classes.
            image_similarity: N..., cosine similarity of each pixel / region with e_v (needed
                only with ``bg_global_similarity``).

        Returns:
            probs (no background), or K x N...: class 0 scores ``bg_threshold``, and pixels or
            regions at ``bg_global_similarity`` or above are background with probability 1.
        """
        if not self.has_background:
            return probs
        bg = probs.new_full((1,) + probs.shape[1:], self.bg_threshold)
        probs = torch.cat([bg, probs], dim=0)
        if self.bg_global_similarity > 0:
            is_bg = image_similarity >= self.bg_global_similarity
            background = probs.new_zeros((len(probs),) + (1,) * is_bg.dim())
            background[0] = 1.0
            probs = torch.where(is_bg, background, probs)
        return probs


def _storage_iteration() -> int:
    """The iteration of the current Detectron2 EventStorage (the trainer's ``iter``), else 0."""
    try:
        return int(get_event_storage().iter)
    except AssertionError:  # not inside a trainer
        return 0


def _to_output(maps: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    """N x h x w token-grid maps -> N x height x width: upsampled to the padded image, the padding
    cropped, then resized to the output size. ``sizes``: ((Hp, Wp), (H, W), (height, width))."""
    padded, (H, W), output_size = sizes
    up = F.interpolate(maps[None], size=padded, mode="bilinear", align_corners=False)[0]
    return up[:, :H, :W] if output_size == (H, W) else sem_seg_postprocess(up, (H, W), *output_size)


def _windows(length: int, size: int, stride: int) -> List[Tuple[int, int]]:
    """[start, end) windows of at most ``size`` every ``stride`` covering [0, length); the last
    one stops at the border (shorter, not shifted back), so no area is processed twice for nothing."""
    starts = [0]
    while starts[-1] + size < length:
        starts.append(starts[-1] + stride)
    return [(s, min(s + size, length)) for s in starts]
