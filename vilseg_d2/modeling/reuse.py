"""Scoring the same images many times: each image's embeddings, regions and refinement affinities
computed once, while only the vocabulary or the background rules change (``tools/run_demo.py``
chooses its background rules this way); a label map refined before is not refined again."""

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
    affinities it computed, and the refinement of each label map it refined. Scoring the same
    images again under other vocabularies or background rules repeats only the scoring, and the
    refinement's propagation where the rules changed the label map (it reads only the labels).

    Everything is kept while it lives: per image, about 4 * 8 * len(refine_dilations) bytes per
    pixel for the affinities (3 MB at 128 x 128 with the default dilations; 50 MB at 512 x 512)
    and 8 bytes per output pixel for the cluster ids. Meant for small sets of images scored many
    times, not for a whole evaluation. The weights must not change meanwhile.
    """

    # No docstring (D107): no config, a copy of ``segmenter``.
    def __init__(self, segmenter: ViLSegSegmenter):  # noqa: D107
        self.__dict__.update(vars(segmenter))
        self._cache: Dict[tuple, object] = {}
        self._last_refined: Dict[tuple, Tuple[tuple, torch.Tensor]] = {}

    @staticmethod
    def _key(kind: str, image: torch.Tensor, key: tuple) -> tuple:
        content = hashlib.blake2b(
            image.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16
        )
        return (kind, tuple(image.shape), content.digest(), str(image.device),
                torch.is_autocast_enabled(image.device.type), *key)  # fmt: skip

    def _memo(self, kind: str, image: torch.Tensor, compute: Callable[[], T], key: tuple) -> T:
        full_key = self._key(kind, image, key)
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

    def refine(self, image: torch.Tensor, sem_seg: torch.Tensor) -> torch.Tensor:
        # Only the last refinement of each image is kept (K x H x W floats each): the rules are
        # tried image by image in turn, and neighbouring rules often leave the labels as they were.
        labels = hashlib.blake2b(sem_seg.argmax(0).cpu().numpy().tobytes(), digest_size=16)
        key = (labels.digest(), tuple(sem_seg.shape), self.refine_iters, self.refine_dilations)
        image_key = self._key("refined", image, ())
        last = self._last_refined.get(image_key)
        if last is None or last[0] != key:
            last = self._last_refined[image_key] = (key, super().refine(image, sem_seg))
        return last[1].clone()

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
        caches = ("_cache", "_last_refined")
        outer.__dict__.update({k: v for k, v in vars(reusing).items() if k not in caches})
        model.segmenter = outer
