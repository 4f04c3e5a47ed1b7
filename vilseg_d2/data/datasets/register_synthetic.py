"""The synthetic caption world: ``synthetic_captions_train`` and ``synthetic_sem_seg_val``.

Registered at import under ``$DETECTRON2_DATASETS/synthetic``; generate it there with
``python -m vilseg_d2.data.synthetic`` or point both names elsewhere with
:func:`register_synthetic_world`.
"""

from __future__ import annotations

import json
import os

from detectron2.data.datasets import load_sem_seg

from ...errors import MissingFileError
from ..synthetic import STUFF_CLASSES, STUFF_COLORS
from .register_captions import register_caption_dataset
from .register_sem_seg import register_sem_seg_dataset

__all__ = ["register_synthetic_world", "default_synthetic_root", "SYNTHETIC_TRAIN", "SYNTHETIC_VAL"]

SYNTHETIC_TRAIN = "synthetic_captions_train"
SYNTHETIC_VAL = "synthetic_sem_seg_val"


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/synthetic`` (``datasets/synthetic`` when the variable is unset)."""
    return os.path.join(
        os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "synthetic"
    )


def _read_meta(root: str) -> dict:
    path = os.path.join(root, "meta.json")
    if not os.path.isfile(path):
        raise MissingFileError(
            f"No synthetic world at {root} (no meta.json). Generate it with "
            f"`python -m vilseg_d2.data.synthetic --out {root}`, or call "
            f"vilseg_d2.data.register_synthetic_world(<its folder>)."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_val(root: str) -> list[dict]:
    size = _read_meta(root)["image_size"]
    records = load_sem_seg(
        os.path.join(root, "val", "masks"), os.path.join(root, "val", "images"), "png", "png"
    )
    for r in records:
        r["height"] = r["width"] = size
    return records


def register_synthetic_world(root: str | None = None) -> None:
    """(Re-)register the synthetic world's two datasets at ``root``.

    Args:
        root: the folder ``python -m vilseg_d2.data.synthetic --out`` wrote (default
            :func:`default_synthetic_root`).
    """
    root = root or default_synthetic_root()
    hint = f"generate it with `python -m vilseg_d2.data.synthetic --out {root}`"
    register_caption_dataset(
        SYNTHETIC_TRAIN,
        manifest=os.path.join(root, "train.jsonl"),
        image_root=root,
        missing_hint=hint,
    )
    register_sem_seg_dataset(
        SYNTHETIC_VAL,
        image_dir=os.path.join(root, "val", "images"),
        gt_dir=os.path.join(root, "val", "masks"),
        stuff_classes=STUFF_CLASSES,
        stuff_colors=STUFF_COLORS,
        loader=lambda: _load_val(root),
        missing_hint=hint,
        root=os.path.dirname(os.path.abspath(root)),
    )
