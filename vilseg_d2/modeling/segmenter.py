"""``ViLSegSegmenter``: ViL-Seg's inference, from pixel embeddings and a vocabulary to class maps.

The modes (``online``: the clustering head, the paper; ``kmeans``: per-image K-means;
``kmeans_dataset``: nearest of C centroids fit once with K-means on caption-training images, the
paper's offline baseline read as post-processing whose clusters do not adapt per image; ``dense``:
per-pixel matching, which on pretrained CLIP towers is the paper's "CLIP + Seg"), region pooling,
the background rules, sliding windows and mask refinement. It holds settings only: the networks
it needs come in a :class:`PixelEncoder` at each call, so it can also segment embeddings computed
elsewhere (:meth:`ViLSegSegmenter.embedding_regions` +
:meth:`ViLSegSegmenter.score`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from .kmeans import kmeans, load_centroids
from .mask_refinement import check_refinement_config, local_affinity, refine_masks

__all__ = ["ViLSegSegmenter", "PixelEncoder", "ImageRegions", "INFERENCE_MODES"]

INFERENCE_MODES = ("online", "kmeans", "kmeans_dataset", "dense")
Size = Tuple[int, int]  # (height, width)
Sizes = Tuple[Size, Size, Size]
Labels = Tuple[torch.Tensor, torch.Tensor]  # K x H x W class scores, H x W cluster (or class) ids


class PixelEncoder(NamedTuple):
    """What segmenting takes from the model.

    Attributes:
        embed: 1 x 3 x Hp x Wp normalised image (sides multiples of ``patch``) -> 1 x D x h x w
            pixel embeddings e_pxl.
        cluster_logits: 1 x D x h x w embeddings -> C x h x w logits of the clustering head.
        patch: the backbone's stride.
        logit_scale: 1/tau, the scale of the cosine similarities with the text.
    """

    embed: Callable[[torch.Tensor], torch.Tensor]
    cluster_logits: Callable[[torch.Tensor], torch.Tensor]
    patch: int
    logit_scale: Union[torch.Tensor, float]


class ImageRegions(NamedTuple):
    """An image's vocabulary- and rule-independent inference features.

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


class ViLSegSegmenter:
    """Segments an image against a vocabulary's text embeddings (see the module docstring).

    ``segment(image, text, encoder, output_size)`` returns (K x height x width class
    probabilities, height x width long cluster ids; "dense": the class ids). With mask
    refinement, the probabilities are the refined label map's class vote shares.
    """

    @configurable
    def __init__(
        self,
        *,
        mode: str = "online",
        num_clusters: int = 25,
        kmeans_iters: int = 20,
        kmeans_seed: int = 0,
        bg_threshold: float = 0.0,
        bg_global_similarity: float = 0.0,
        window_size: int = 0,
        window_stride: int = 0,
        refine_iters: int = 0,
        refine_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        dataset_centroids: Optional[torch.Tensor] = None,
    ):
        """
        Args:
            mode: one of :data:`INFERENCE_MODES`.
            num_clusters, kmeans_iters, kmeans_seed: the K-means baseline's settings (C as the
                clustering head's).
            bg_threshold: > 0 adds the background as class 0 (the text embeddings are the other
                classes'): it gets every pixel whose best class probability is below the threshold.
            bg_global_similarity: > 0 also adds the background as class 0, and gives it every
                pixel ("dense") or region ("online", "kmeans") whose embedding has at least this
                cosine similarity with the image's embedding (the mean of its pixel embeddings,
                e_v of the paper). Training matches e_v to the caption, and the background,
                most of the image, carries that image-level summary; objects stand out from it.
            window_size, window_stride: > 0 segments images larger than the window window by
                window, averaging the class probabilities where windows overlap (stride 0: two
                thirds of the window).
            refine_iters, refine_dilations: > 0 refines the label map of the whole (stitched)
                image with that many steps of pixel-adaptive mask refinement
                (:func:`refine_masks`, PAMR with TCL's steps and dilations) at the input's size.
            dataset_centroids: C x D centroids of "kmeans_dataset" (``tools/fit_centroids.py``).
        """
        if mode not in INFERENCE_MODES:
            raise ValueError(
                f"MODEL.VILSEG.INFERENCE_MODE must be one of {INFERENCE_MODES}, got {mode!r}."
            )
        check_refinement_config(refine_iters, refine_dilations)
        self.mode = mode
        self.num_clusters = num_clusters
        self.kmeans_iters = kmeans_iters
        self.kmeans_seed = kmeans_seed
        self.bg_threshold = bg_threshold
        self.bg_global_similarity = bg_global_similarity
        self.window_size = window_size
        self.window_stride = window_stride or max(window_size * 2 // 3, 1)
        self.refine_iters = refine_iters
        self.refine_dilations = tuple(int(d) for d in refine_dilations)
        self.dataset_centroids = dataset_centroids

    @classmethod
    def from_config(cls, cfg):
        v = cfg.MODEL.VILSEG
        centroids = None
        if v.DATASET_CENTROIDS or v.INFERENCE_MODE == "kmeans_dataset":
            centroids = load_centroids(v.DATASET_CENTROIDS, v.NUM_CLUSTERS)["centroids"]
        return {
            "mode": v.INFERENCE_MODE,
            "num_clusters": v.NUM_CLUSTERS,
            "kmeans_iters": v.KMEANS_ITERS,
            "kmeans_seed": v.KMEANS_SEED,
            "bg_threshold": v.BG_THRESHOLD,
            "bg_global_similarity": v.BG_GLOBAL_SIMILARITY,
            "window_size": v.SLIDING_WINDOW_SIZE,
            "window_stride": v.SLIDING_WINDOW_STRIDE,
            "refine_iters": v.REFINE_ITERS,
            "refine_dilations": tuple(v.REFINE_DILATIONS),
            "dataset_centroids": centroids,
        }

    @property
    def has_background(self) -> bool:
        """Whether the rules add the background (class 0 of the output), found without text."""
        return self.bg_threshold > 0 or self.bg_global_similarity > 0

    def segment(
        self, image: torch.Tensor, text: torch.Tensor, encoder: PixelEncoder, output_size: Size
    ) -> Labels:
        """Segment one image, refined if ``refine_iters`` > 0.

        Args:
            image: 3 x H x W normalised image.
            text: K' x D unit-norm class embeddings (K' = K - 1 with the background rules).
            encoder: the model's networks.
            output_size: (height, width) of the result.
        """
        if not self.refine_iters:
            return self.segment_windows(image, text, encoder, output_size)
        H, W = image.shape[-2:]  # refined at the input's size, where image and maps align
        sem_seg, clusters = self.segment_windows(image, text, encoder, (H, W))
        sem_seg = self.refine(image, sem_seg)
        if self.mode == "dense":  # its "clusters" are the class ids
            clusters = sem_seg.argmax(0)
        if _resized(output_size, (H, W)):
            sem_seg = sem_seg_postprocess(sem_seg, (H, W), *output_size)
            clusters = _resize_ids(clusters, output_size)
        return sem_seg, clusters

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """The refinement's colour affinities of a normalised 3 x H x W image."""
        return local_affinity(image, dilations=self.refine_dilations)

    def refine(self, image: torch.Tensor, sem_seg: torch.Tensor) -> torch.Tensor:
        """The refined class vote shares (K x H x W) of ``sem_seg``'s label map on ``image``."""
        return refine_masks(
            image,
            sem_seg,
            iterations=self.refine_iters,
            dilations=self.refine_dilations,
            affinity=self.affinity(image),
        )

    def segment_windows(
        self, image: torch.Tensor, text: torch.Tensor, encoder: PixelEncoder, output_size: Size
    ) -> Labels:
        """Segment one normalised image (3 x H x W), whole or window by window; no refinement.

        The clustering modes resize their C cluster logits to ``output_size`` and then look up
        the class scores, rather than resizing K score maps (Detectron2's ``sem_seg_postprocess``).
        """
        H, W = image.shape[-2:]
        output_size = tuple(output_size)
        size, stride = self.window_size, self.window_stride
        if size <= 0 or (H <= size and W <= size):
            return self.score(
                self.image_regions(image, encoder, output_size), text, encoder.logit_scale
            )
        scores = None
        count = image.new_zeros(1, H, W)
        clusters = torch.zeros(H, W, dtype=torch.long, device=image.device)
        for y0, y1 in _windows(H, size, stride):
            for x0, x1 in _windows(W, size, stride):
                window = image[:, y0:y1, x0:x1]
                s, c = self.score(
                    self.image_regions(window, encoder, (y1 - y0, x1 - x0)),
                    text,
                    encoder.logit_scale,
                )
                if scores is None:
                    scores = s.new_zeros(s.shape[0], H, W)
                scores[:, y0:y1, x0:x1] += s
                count[:, y0:y1, x0:x1] += 1
                clusters[y0:y1, x0:x1] = c
        scores = scores / count
        if _resized(output_size, (H, W)):
            scores = sem_seg_postprocess(scores, (H, W), *output_size)
            clusters = _resize_ids(clusters, output_size)
        return scores, clusters

    def image_regions(
        self, image: torch.Tensor, encoder: PixelEncoder, output_size: Tuple[int, int]
    ) -> ImageRegions:
        """Pad a normalised 3 x H x W image to the patch, embed it, and find its regions."""
        padded = ImageList.from_tensors(
            [image], size_divisibility=encoder.patch
        ).tensor  # 1 x 3 x Hp x Wp
        emb = encoder.embed(padded).float()  # 1 x D x h x w
        sizes = (tuple(padded.shape[-2:]), tuple(image.shape[-2:]), tuple(output_size))
        logits = encoder.cluster_logits(emb).float() if self.mode == "online" else None
        return self.embedding_regions(emb, sizes, logits)

    def embedding_regions(
        self, emb: torch.Tensor, sizes: Sizes, cluster_logits: Optional[torch.Tensor] = None
    ) -> ImageRegions:
        """What segmenting an image takes that neither the vocabulary nor the background rules
        change: the pixel embeddings ("dense"), or the regions ("online", "kmeans").

        Args:
            emb: 1 x D x h x w pixel embeddings.
            sizes: ((Hp, Wp) padded input, (H, W) input, (height, width) output).
            cluster_logits: C x h x w clustering-head logits ("online" only).
        """
        h, w = emb.shape[-2:]
        emb_flat = F.normalize(emb[0].flatten(1).t(), dim=-1)  # hw x D
        image_emb = F.normalize(emb[0].mean(dim=(1, 2)), dim=0)  # D, e_v
        if self.mode == "dense":
            return ImageRegions(image_emb=image_emb, sizes=sizes, emb=emb_flat, grid=(h, w))
        if self.mode in ("kmeans", "kmeans_dataset"):
            # on the unit-norm embeddings; logits = -squared distance to the centroids
            centroids = self._centroids(emb_flat)
            cluster_logits = -torch.cdist(emb_flat, centroids).pow(2).t().reshape(-1, h, w)
        num_clusters = cluster_logits.shape[0]
        # Region features (paper: e_rgn = mean of e_pxl over M_c), from token-level assignments;
        # a cluster that only wins after upsampling falls back to its soft-weighted mean.
        token_assign = cluster_logits.flatten(1).max(0).indices  # hw
        weights = F.one_hot(token_assign, num_clusters).float()  # hw x C
        empty = weights.sum(0) == 0  # C
        weights = torch.where(empty, cluster_logits.flatten(1).t().softmax(-1), weights)
        region = F.normalize(weights.t() @ emb_flat, dim=-1)  # C x D
        # Pixel-level assignment from the upsampled cluster logits; each pixel takes its region's
        # scores.
        assign = _to_output(cluster_logits, sizes).max(0).indices  # height x width
        return ImageRegions(image_emb=image_emb, sizes=sizes, region=region, assign=assign)

    def _centroids(self, emb: torch.Tensor) -> torch.Tensor:
        """C x D centroids: K-means of this image's unit-norm pixel embeddings (hw x D), or the
        dataset's."""
        if self.mode == "kmeans":
            return kmeans(emb, self.num_clusters, self.kmeans_iters, self.kmeans_seed)[1]
        if self.dataset_centroids is None:
            raise ValueError(
                "INFERENCE_MODE 'kmeans_dataset' needs centroids: set MODEL.VILSEG."
                "DATASET_CENTROIDS to a file of tools/fit_centroids.py (or the segmenter's "
                "dataset_centroids)."
            )
        centroids = self.dataset_centroids.to(emb.device)
        if centroids.shape[1] != emb.shape[1]:
            raise ValueError(
                f"The dataset centroids are {centroids.shape[1]}-dimensional, the model's "
                f"embeddings {emb.shape[1]}-dimensional: fit them for this model."
            )
        return centroids

    def score(
        self, regions: ImageRegions, text: torch.Tensor, logit_scale: Union[torch.Tensor, float]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Score an image's pixels or regions against the vocabulary, with the background rules.

        Args:
            regions: from :meth:`embedding_regions`.
            text: K' x D unit-norm class embeddings.
            logit_scale: 1/tau.

        Returns:
            (K x height x width class probabilities, height x width long cluster ids; for
            "dense", the class ids).
        """
        sizes = regions.sizes
        if self.mode == "dense":
            emb, grid = regions.emb, regions.grid
            logits = (logit_scale * (emb @ text.t())).t().reshape(-1, *grid)  # K' x h x w
            similarity = None
            if self.bg_global_similarity > 0:
                # height x width
                similarity = _to_output((emb @ regions.image_emb).view(1, *grid), sizes)[0]
            probs = self.with_background(_to_output(logits, sizes).softmax(0), similarity)
            return probs, probs.max(0).indices

        region = regions.region
        region_probs = (logit_scale * region @ text.t()).softmax(-1).t()  # K' x C
        region_probs = self.with_background(region_probs, region @ regions.image_emb)  # K x C
        # Written pixel-major (height x width x K, returned as a K x height x width view): a row
        # copy per pixel instead of a strided gather per class, and argmax over the classes, which
        # is what every consumer does, reads contiguous memory. Measured at 448 x 448 with K = 1000:
        # 0.48 s against 0.65 s to write, 0.14 s against 0.73 s for the evaluator's argmax.
        # K x height x width view
        scores = F.embedding(regions.assign, region_probs.t()).permute(2, 0, 1)
        return scores, regions.assign

    def with_background(
        self, probs: torch.Tensor, image_similarity: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Prepend the background (class 0) when the rules are on.

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


def _to_output(maps: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    """N x h x w token-grid maps -> N x height x width: upsampled to the padded image, the padding
    cropped, then resized to the output size. ``sizes``: ((Hp, Wp), (H, W), (height, width))."""
    padded, (H, W), output_size = sizes
    up = F.interpolate(maps[None], size=padded, mode="bilinear", align_corners=False)[0]
    if _resized(output_size, (H, W)):
        return sem_seg_postprocess(up, (H, W), *output_size)
    return up[:, :H, :W]


def _resized(output_size: Size, size: Size) -> bool:
    """Whether maps of ``size`` must be resized to ``output_size``: when the sizes differ, and
    always in a traced graph (ONNX, TorchScript), whose sizes are only known when it runs
    (resizing to the same size changes no value)."""
    return torch.jit.is_tracing() or tuple(output_size) != tuple(size)


def _resize_ids(ids: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
    """An H x W id map resized (nearest) to ``output_size``."""
    resized = F.interpolate(ids[None, None].float(), size=tuple(output_size), mode="nearest")
    return resized[0, 0].long()


def _windows(length: int, size: int, stride: int) -> List[Tuple[int, int]]:
    """[start, end) windows of at most ``size`` every ``stride`` covering [0, length); the last
    one stops at the border (shorter, not shifted back), so no area is processed twice for nothing.
    """
    starts = [0]
    while starts[-1] + size < length:
        starts.append(starts[-1] + stride)
    return [(s, min(s + size, length)) for s in starts]


class SegmenterSettings:
    """Mixin for a module that owns a :class:`ViLSegSegmenter` as ``self.segmenter``: its inference
    settings read and set on the module as on the segmenter (``model.bg_threshold = 0.9``)."""

    @contextlib.contextmanager
    def settings(self, **values) -> Iterator[None]:
        """Set inference settings for the time of the block (``with model.settings(
        inference_mode="dense", refine_iters=0):``); the old values are restored after."""
        old = {k: getattr(self, k) for k in values}
        for k, v in values.items():
            setattr(self, k, v)
        try:
            yield
        finally:
            for k, v in old.items():
                setattr(self, k, v)


for _name, _setting in (
    ("inference_mode", "mode"),
    ("bg_threshold", "bg_threshold"),
    ("bg_global_similarity", "bg_global_similarity"),
    ("sliding_window_size", "window_size"),
    ("sliding_window_stride", "window_stride"),
    ("refine_iters", "refine_iters"),
    ("refine_dilations", "refine_dilations"),
    ("kmeans_iters", "kmeans_iters"),
    ("kmeans_seed", "kmeans_seed"),
):
    setattr(
        SegmenterSettings,
        _name,
        property(
            lambda self, name=_setting: getattr(self.segmenter, name),
            lambda self, value, name=_setting: setattr(self.segmenter, name, value),
            doc=f"The segmenter's ``{_setting}`` (see :class:`ViLSegSegmenter`).",
        ),
    )
