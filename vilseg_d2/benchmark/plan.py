"""What the benchmark measures for one config, and how often; the config it measures with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import get_vilseg_cfg

__all__ = [
    "DTYPES",
    "MODES",
    "PASCAL_VOC_CLASSES",
    "SECTIONS",
    "Profile",
    "load_cfg",
    "profile_for",
    "synthetic_vocabulary",
]

PASCAL_VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
)  # fmt: skip

SECTIONS = ("inference", "vocabulary", "sizes", "training", "loader", "export")
DTYPES = ("fp32", "bf16")
MODES = ("online", "kmeans", "dense")


@dataclass
class Profile:
    """What is measured for one config, and how often.

    Attributes:
        name: short key of the config in the results ("vitb16", "tiny").
        config_file: the YAML config.
        base_size: side of the square image of the inference and vocabulary sections.
        sizes: (H, W) of the whole-image size sweep.
        large_size: (H, W) of the image segmented by sliding window.
        window: sliding window side.
        strides: sliding window strides (``window`` = no overlap; smaller = overlap).
        vocab_sizes: (small, large) vocabulary sizes.
        train_batch: training batch of the training section.
        text_dtype: precision of the one-time vocabulary encoding ("bf16" for the big model,
            whose 1,000-class encoding takes tens of seconds in fp32).
        consumption_batch: if set, one more bf16 training job at this batch: the step whose
            sample consumption the loader is compared with.
        caps: per slow item kind ("size_large", "sliding", "train_fp32", "train_bf16"), the most
            (warm-up, repetitions) to use. The sliding-window image needs no warm-up of its own:
            its windows have the base size, already warmed up by the earlier sections.
        warmup, reps: warm-up calls and timed repetitions of the other items.
    """

    name: str
    config_file: str
    base_size: int
    sizes: Tuple[Tuple[int, int], ...]
    large_size: Tuple[int, int]
    window: int
    strides: Tuple[int, ...]
    vocab_sizes: Tuple[int, int] = (21, 1000)
    train_batch: int = 8
    text_dtype: str = "fp32"
    consumption_batch: Optional[int] = None
    caps: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    warmup: int = 1
    reps: int = 3

    def schedule(self, kind: str = "") -> Tuple[int, int]:
        """(warm-up, repetitions) for an item of this kind."""
        if kind in self.caps:
            warmup, reps = self.caps[kind]
            return min(self.warmup, warmup), max(1, min(self.reps, reps))
        return self.warmup, self.reps


def _round_to(value: float, multiple: int) -> int:
    """``value`` rounded down to a multiple of ``multiple`` (at least ``multiple``)."""
    return max(multiple, int(value // multiple) * multiple)


def profile_for(name: str, config_file: str, cfg, *, tiny: bool, warmup: int, reps: int) -> Profile:
    """The measurement plan of one config.

    The base size is the config's ``INPUT.MIN_SIZE_TEST`` (448 for ViT-B/16), or 64 in tiny mode
    (which also trains on batch 2 instead of 8); the large sliding-window image has the
    2048x1024 : 448 proportions (exactly 2048x1024 at 448).

    Args:
        name: key of the config in the results.
        config_file: the YAML file.
        cfg: the loaded config.
        tiny: the seconds-long plan used by the tests.
        warmup, reps: the command line's warm-up and repetitions.
    """
    base = 64 if tiny else int(cfg.INPUT.MIN_SIZE_TEST)
    patch = 16
    large = (_round_to(base * 1024 / 448, patch), _round_to(base * 2048 / 448, patch))
    # the eval configs' overlap: stride 320 for windows of 448
    overlap_stride = max(patch, round(base * 320 / 448 / patch) * patch)
    is_big = not tiny and cfg.MODEL.OPEN_CLIP.MODEL_NAME.startswith("ViT-")
    caps = {}
    if is_big:
        caps = {"size_large": (1, 2), "sliding": (0, 1), "train_fp32": (1, 1), "train_bf16": (1, 2)}
    # The loader section is compared with the tiny config's training step at its own batch.
    consumption = int(cfg.SOLVER.IMS_PER_BATCH) if name == "tiny" and not tiny else None
    return Profile(
        name=name,
        config_file=config_file,
        base_size=base,
        sizes=tuple((s, s) for s in (base // 2, base, base * 2)),
        large_size=large,
        window=base,
        strides=(base, overlap_stride),
        train_batch=2 if tiny else 8,
        text_dtype="bf16" if is_big else "fp32",
        consumption_batch=consumption if consumption and consumption != 8 else None,
        caps=caps,
        warmup=warmup,
        reps=reps,
    )


def load_cfg(config_file: str, opts: Sequence[str] = ()):
    """A Detectron2 config (not frozen) for CPU benchmarking, without a test dataset.

    Inference is timed as the paper's, without a config's mask refinement, so that configs compare
    alike; ``opts`` can set ``MODEL.VILSEG.REFINE_ITERS`` to time it.
    """
    cfg = get_vilseg_cfg(
        config_file, ["MODEL.VILSEG.REFINE_ITERS", "0", *opts, "MODEL.DEVICE", "cpu"]
    )
    cfg.DATASETS.TEST = ()
    return cfg


def synthetic_vocabulary(size: int) -> List[str]:
    """``size`` class names: PASCAL VOC for 21, else "background", "class 1", "class 2", ...
    (a "background" class first, as configs with background rules need)."""
    if size == len(PASCAL_VOC_CLASSES):
        return list(PASCAL_VOC_CLASSES)
    return ["background"] + [f"class {i}" for i in range(1, size)]
