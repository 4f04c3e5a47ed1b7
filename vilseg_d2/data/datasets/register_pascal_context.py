"""PASCAL Context val (5105 images): ``pascal_context_59_sem_seg_val`` (59 classes, other pixels
ignored) and ``pascal_context_60_sem_seg_val`` (background + the 59 classes). Files written by
``datasets/prepare_pascal_context.py``.
"""

from __future__ import annotations

import os

from .register_sem_seg import prepare_hint, register_sem_seg_dataset

__all__ = ["PASCAL_CONTEXT_59_CLASSES", "PASCAL_CONTEXT_UNSEEN_CLASSES", "register_pascal_context"]

# The 59 most frequent classes of PASCAL Context, in the usual label order, spelled readably
# ("potted plant", "tv monitor"): the text prompts use them as they are.
PASCAL_CONTEXT_59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "potted plant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tv monitor", "wall",
    "water", "window", "wood",
]  # fmt: skip
# Unseen classes of the zero-shot protocol (paper section 4.1).
PASCAL_CONTEXT_UNSEEN_CLASSES = ["cow", "motorbike", "sofa", "cat"]


def register_pascal_context(root: str) -> None:
    """Register the two PASCAL Context val variants under ``root`` (``$DETECTRON2_DATASETS``)."""
    base = os.path.join(root, "pascal_context")
    image_dir = os.path.join(base, "images_detectron2", "val")
    hint = prepare_hint(
        "prepare_pascal_context.py",
        root,
        f"VOCtrainval_03-May-2010.tar and PASCAL Context's trainval.tar.gz are extracted in "
        f"{base}, with its labels.txt (the script needs scipy)",
    )
    variants = [
        ("pascal_context_59_sem_seg_val", "pc59_val", PASCAL_CONTEXT_59_CLASSES),
        ("pascal_context_60_sem_seg_val", "pc60_val", ["background"] + PASCAL_CONTEXT_59_CLASSES),
    ]
    for name, ann, classes in variants:
        register_sem_seg_dataset(
            name,
            image_dir=image_dir,
            gt_dir=os.path.join(base, "annotations_detectron2", ann),
            stuff_classes=classes,
            unseen_classes=PASCAL_CONTEXT_UNSEEN_CLASSES,
            missing_hint=hint,
            root=root,
        )
