"""PASCAL VOC 2012 semantic segmentation val (1449 images): ``voc_2012_sem_seg_val`` (21 classes,
background included) and ``voc_2012_sem_seg_val_20`` (the 20 object classes; background pixels
are ignored). Files written by ``datasets/prepare_voc_sem_seg.py``.
"""

from __future__ import annotations

import os

from .register_sem_seg import prepare_hint, register_sem_seg_dataset

__all__ = ["VOC_CLASSES", "VOC_UNSEEN_CLASSES", "voc_palette", "register_voc_2012"]

# The 20 VOC object classes in label order (ids 1..20 in the official masks), with readable
# names for the text prompts ("pottedplant" -> "potted plant").
VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
]  # fmt: skip
# Unseen classes of the zero-shot protocol (paper section 4.1).
VOC_UNSEEN_CLASSES = ["potted plant", "sheep", "sofa", "train", "tv monitor"]


def voc_palette(n: int = 256) -> list[list[int]]:
    """The PASCAL VOC colour map (the palette of the official masks): colour of class i."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append([r, g, b])
    return colors


def register_voc_2012(root: str) -> None:
    """Register the two VOC 2012 val variants under ``root`` (``$DETECTRON2_DATASETS``)."""
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    image_dir = os.path.join(voc, "images_detectron2", "val")
    palette = voc_palette(21)
    hint = prepare_hint(
        "prepare_voc_sem_seg.py", root, f"VOCtrainval_11-May-2012.tar is extracted in {root}"
    )
    variants = [
        ("voc_2012_sem_seg_val", "annotations_detectron2", ["background"] + VOC_CLASSES, palette),
        ("voc_2012_sem_seg_val_20", "annotations_detectron2_20", VOC_CLASSES, palette[1:]),
    ]
    for name, ann, classes, colors in variants:
        register_sem_seg_dataset(
            name,
            image_dir=image_dir,
            gt_dir=os.path.join(voc, ann, "val"),
            stuff_classes=classes,
            unseen_classes=VOC_UNSEEN_CLASSES,
            stuff_colors=colors,
            missing_hint=hint,
            root=root,
        )
