"""Synthetic model inputs of the sizes a config sets, for counting and timing."""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from detectron2.utils.events import EventStorage

__all__ = [
    "random_image",
    "training_samples",
    "inference_inputs",
    "training_iteration",
    "training_storage",
]

# The inference input's vocabulary: 21 classes, as PASCAL VOC (one prompt each), "background"
# first, as configs with background rules need.
DEFAULT_VOCABULARY = ("background",) + tuple(f"class {i}" for i in range(1, 21))


def random_image(
    height: int, width: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """A 3 x H x W uint8 image of uniform noise."""
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def training_samples(cfg, batch: int, seed: int = 0) -> List[Dict]:
    """``batch`` training dicts shaped like the caption mapper's output (random pixels).

    Each has ``image`` and ``transformed_image`` (3 x S x S uint8, S =
    ``INPUT.VILSEG.GLOBAL_SIZE``), ``local_crops`` (``NUM_LOCAL_CROPS`` tensors 3 x s x s, s =
    ``LOCAL_SIZE``), ``flip`` and ``caption``.
    """
    v = cfg.INPUT.VILSEG
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "image": random_image(v.GLOBAL_SIZE, v.GLOBAL_SIZE, gen),
            "local_crops": [
                random_image(v.LOCAL_SIZE, v.LOCAL_SIZE, gen) for _ in range(v.NUM_LOCAL_CROPS)
            ],
            "transformed_image": random_image(v.GLOBAL_SIZE, v.GLOBAL_SIZE, gen),
            "flip": i % 2 == 1,
            "caption": f"a red star next to a blue ring number {i}",
        }
        for i in range(batch)
    ]


def inference_inputs(
    cfg, vocabulary: Sequence[str] = DEFAULT_VOCABULARY, size: int = 0
) -> List[Dict]:
    """One inference dict: a square uint8 image of side ``size`` (default ``INPUT.MIN_SIZE_TEST``)
    and a ``vocabulary``."""
    side = int(size or cfg.INPUT.MIN_SIZE_TEST)
    return [
        {
            "image": random_image(side, side, torch.Generator().manual_seed(0)),
            "vocabulary": list(vocabulary),
        }
    ]


def training_iteration(cfg) -> int:
    """The first training iteration at which all three objectives are in full force
    (the end of ``MODEL.VILSEG.AUX_WARMUP_ITERS``)."""
    return int(cfg.MODEL.VILSEG.AUX_WARMUP_ITERS[1])


@contextlib.contextmanager
def training_storage(cfg) -> Iterator[EventStorage]:
    """A Detectron2 ``EventStorage`` at :func:`training_iteration`: the model reads its training
    iteration from it, as inside a trainer."""
    with EventStorage(training_iteration(cfg)) as storage:
        yield storage
