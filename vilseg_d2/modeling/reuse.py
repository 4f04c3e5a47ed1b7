"""Scoring the same images many times: each image's embeddings, regions and refinement affinities
computed once, while only the vocabulary or the background rules change (``tools/run_demo.py``
chooses its background rules this way)."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Dict, Iterator, Tuple, TypeVar

import torch

from .segmenter import ImageRegions, PixelEncoder, ViLSegSegmenter

__all__ = ["ReusingSegmenter", "reuse_image_features"]

T = TypeVar("T")


class ReusingSegmenter(ViLSegSegmenter):
    """A :class:`ViLSegSegmenter` with the settings of another that keeps, per image content
    (and mode, output size, device and autocast state), the regions and the refinement's
    affinities it computed. Scoring the same images again under other vocabularies or
    background rules repeats only the scoring and the refinement's propagation.

    Everything is kept while it lives: per image, about 4 * 8 * len(refine_dilations) bytes per
    pixel for the affinities (3 MB at 128 x 128 with the default dilations; 50 MB at 512 x 512)
    and 8 bytes per output pixel for the cluster ids. Meant for small sets of images scored many
    times, not for a whole evaluation. The weights must not change meanwhile.
    """

    # No docstring (D107): no config, a copy of ``segmenter``.
    def __init__(self, segmenter: ViLSegSegmenter):  # noqa: D107
        self.__dict__.update(vars(segmenter))
        self._cache: Dict[tuple, object] = {}

    def _memo(self, kind: str, image: torch.Tensor, compute: Callable[[], T], key: tuple) -> T:
        content = hashlib.blake2b(
            image.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16
        )
        full_key = (kind, tuple(image.shape), content.digest(), str(image.device),
                    torch.is_autocast_enabled(image.device.type), *key)  # fmt: skip
        if full_key not in self._cache:
            self._cache[full_key] = compute()
        return self._cache[full_key]

    def image_regions(
        self, image: torch.Tensor, encoder: PixelEncoder, output_size: Tuple[int, int]
    ) -> ImageRegions:
        key = (
            self.mode,
            self.num_clusters,
            self.kmeans_iters,
            self.kmeans_seed,
            tuple(output_size),
        )
        return self._memo(
            "regions",
            image,
            lambda: super(ReusingSegmenter, self).image_regions(image, encoder, output_size),
            key,
        )

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        return self._memo(
            "affinity",
            image,
            lambda: super(ReusingSegmenter, self).affinity(image),
            self.refine_dilations,
        )

    def score(
        self, regions: ImageRegions, text: torch.Tensor, logit_scale
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        scores, assign = super().score(regions, text, logit_scale)
        # stored ids go out as copies
        return scores, (assign.clone() if assign is regions.assign else assign)


@contextlib.contextmanager
def reuse_image_features(model) -> Iterator[ReusingSegmenter]:
    """Within the block, ``model`` (a :class:`ViLSeg`) segments with a :class:`ReusingSegmenter`;
    settings changed meanwhile (``model.bg_threshold = ...``) stay after it. Blocks nest (the
    inner one shares the outer cache).

    Example::

        with reuse_image_features(model):
            for rule in rules:
                model.bg_threshold = rule
                outputs = model(inputs)
    """
    outer = model.segmenter
    if isinstance(outer, ReusingSegmenter):
        yield outer
        return
    model.segmenter = reusing = ReusingSegmenter(outer)
    try:
        yield reusing
    finally:
        outer.__dict__.update({k: v for k, v in vars(reusing).items() if k != "_cache"})
        model.segmenter = outer
