"""Pseudo-labels for self-training ("ViL-Seg + ST"): a trained ViL-Seg labels unlabelled images,
and per class only its most confident pixels are kept (ZS3Net's recipe), the rest ignored.

The folder :func:`write_pseudo_labels` and :func:`keep_most_confident` fill::

    <root>/raw/<stem>_label.png   the model's class per pixel (index into the classes)
    <root>/raw/<stem>_conf.png    its probability, x 255 (uint8)
    <root>/labels/<stem>.png      the kept label, ``IGNORE_LABEL`` elsewhere
    <root>/dataset.json           name, classes, images, the share kept and its statistics

:func:`vilseg_d2.data.datasets.register_pseudo_label_dataset` registers it as a Detectron2
sem_seg dataset.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IGNORE_LABEL",
    "MANIFEST",
    "label_image",
    "write_pseudo_labels",
    "keep_most_confident",
    "image_stems",
    "write_manifest",
]

IGNORE_LABEL = 255
MANIFEST = "dataset.json"
LEVELS = 256  # confidences are stored as uint8: the kept share is exact up to ties at a level


def image_stems(files: Sequence[str]) -> List[str]:
    """One output name per image: its file stem, which must be unique."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    first = {}
    for stem, file in zip(stems, files):
        dup = first.setdefault(stem, file)
        if dup != file:
            break
    else:
        return stems
    raise ValueError(
        f"{dup} and {file} share a file stem: pseudo-labels are named by stem, so give images "
        "with distinct names."
    )


@torch.no_grad()
def label_image(model, image: torch.Tensor, vocabulary: Sequence[str]) -> Tuple[np.ndarray, ...]:
    """The model's class and confidence per pixel.

    Args:
        model: a ViL-Seg in eval mode (its inference mode, refinement and background rules).
        image: 3 x H x W uint8 RGB.
        vocabulary: the class names (prompt names), output channel k = class k.

    Returns:
        (labels, confidence): two H x W uint8 arrays; confidence = probability x 255.
    """
    probs = model([{"image": image, "vocabulary": list(vocabulary)}])[0]["sem_seg"]  # K x H x W
    if probs.shape[0] >= IGNORE_LABEL:
        raise ValueError(f"At most {IGNORE_LABEL} classes fit a uint8 label map.")
    conf, labels = probs.float().max(dim=0)
    confidence = (conf.clamp(0, 1) * (LEVELS - 1)).round()
    return labels.to(torch.uint8).numpy(), confidence.to(torch.uint8).numpy()


def _raw_paths(root: str, stem: str) -> Tuple[str, str]:
    raw = os.path.join(root, "raw")
    return os.path.join(raw, f"{stem}_label.png"), os.path.join(raw, f"{stem}_conf.png")


def write_pseudo_labels(
    model,
    files: Sequence[str],
    vocabulary: Sequence[str],
    root: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable = lambda it, total: it,
) -> int:
    """Label this process's share of ``files`` (every ``world_size``-th from ``rank``) into
    ``root/raw``, skipping images already labelled (a resumed run). Returns how many were
    labelled now."""
    os.makedirs(os.path.join(root, "raw"), exist_ok=True)
    stems = image_stems(files)
    mine = [(f, s) for i, (f, s) in enumerate(zip(files, stems)) if i % world_size == rank]
    todo = [(f, s) for f, s in mine if not all(map(os.path.isfile, _raw_paths(root, s)))]
    for file, stem in progress(todo, len(todo)):
        rgb = np.asarray(Image.open(file).convert("RGB"))
        labels, confidence = label_image(
            model, torch.from_numpy(rgb.transpose(2, 0, 1).copy()), vocabulary
        )
        label_path, conf_path = _raw_paths(root, stem)
        Image.fromarray(confidence).save(conf_path)
        Image.fromarray(labels).save(label_path + ".tmp.png")
        os.replace(label_path + ".tmp.png", label_path)  # last: its presence marks the image done
    return len(todo)


def _thresholds(histograms: np.ndarray, keep: float) -> np.ndarray:
    """Per class, the lowest confidence level kept: the highest level at which at least ``keep``
    of the class's pixels are at or above it (all levels for a class without pixels)."""
    at_or_above = np.cumsum(histograms[:, ::-1], axis=1)[:, ::-1]  # K x LEVELS
    totals = at_or_above[:, 0:1]
    enough = at_or_above >= np.ceil(keep * totals)
    # the last level that still keeps enough (level 0 always does)
    return LEVELS - 1 - np.argmax(enough[:, ::-1], axis=1)


def keep_most_confident(
    root: str, stems: Sequence[str], classes: Sequence[str], keep: float
) -> Dict[str, Dict[str, float]]:
    """Write ``root/labels``: per class the ``keep`` share (0-1] of its pixels with the highest
    confidence over all images keeps its label, every other pixel becomes ``IGNORE_LABEL``.

    Returns:
        {class: {"pixels", "kept", "kept_share", "threshold" (0-1)}}.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"The share of pixels to keep must be in (0, 1], got {keep}.")
    k = len(classes)
    hist = np.zeros((k, LEVELS), dtype=np.int64)
    for stem in stems:
        labels, conf = (np.asarray(Image.open(p)) for p in _raw_paths(root, stem))
        if labels.max(initial=0) >= k:
            raise ValueError(f"{_raw_paths(root, stem)[0]} has a class index >= {k}.")
        hist += np.bincount(labels.ravel().astype(np.int64) * LEVELS + conf.ravel(),
                            minlength=k * LEVELS).reshape(k, LEVELS)  # fmt: skip
    thresholds = _thresholds(hist, keep)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    kept = np.zeros(k, dtype=np.int64)
    for stem in stems:
        labels, conf = (np.asarray(Image.open(p)) for p in _raw_paths(root, stem))
        keep_mask = conf >= thresholds[labels]
        out = np.where(keep_mask, labels, IGNORE_LABEL).astype(np.uint8)
        kept += np.bincount(labels[keep_mask].ravel(), minlength=k)[:k]
        Image.fromarray(out).save(os.path.join(root, "labels", f"{stem}.png"))
    pixels = hist.sum(axis=1)
    return {
        name: {
            "pixels": int(pixels[i]),
            "kept": int(kept[i]),
            "kept_share": float(kept[i] / pixels[i]) if pixels[i] else 0.0,
            "threshold": float(thresholds[i] / (LEVELS - 1)),
        }
        for i, name in enumerate(classes)
    }


def write_manifest(root: str, **fields) -> str:
    """Write ``root/dataset.json`` (what the registration reads); returns its path."""
    path = os.path.join(root, MANIFEST)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(fields, f, indent=2)
    os.replace(path + ".tmp", path)
    return path
