"""Pseudo-labelled datasets (the folders ``tools/pseudo_label.py`` writes) as Detectron2 sem_seg
datasets, from Python or from ``DATASETS.PSEUDO_LABEL_ROOTS`` in every process."""

from __future__ import annotations

import json
import logging
import os
from typing import List

from ...errors import MissingFileError
from ..pseudo_labels import MANIFEST
from .register_sem_seg import register_sem_seg_dataset

__all__ = ["register_pseudo_label_dataset", "register_pseudo_label_datasets_from_config"]

logger = logging.getLogger(__name__)


def register_pseudo_label_dataset(root: str) -> str:
    """Register the pseudo-labels in ``root`` under the name its ``dataset.json`` holds: records
    of the labelled images with ``root/labels/<stem>.png`` (``ignore_label`` 255 where no label
    was kept), the classes of the model's vocabulary as ``stuff_classes``.

    Returns:
        str: the dataset name.

    Raises:
        FileNotFoundError: ``root`` has no ``dataset.json`` (not written by
            ``tools/pseudo_label.py``, or that run has not finished).
    """
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"{path} is missing: {root} is not a finished output of tools/pseudo_label.py "
            "(run it, or resume it with the same command)."
        )
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    labels = os.path.join(root, "labels")
    images = list(manifest["images"])
    stems = list(manifest["stems"])

    def load() -> list:
        return [
            {"file_name": image, "sem_seg_file_name": os.path.join(labels, f"{stem}.png")}
            for image, stem in zip(images, stems)
        ]

    register_sem_seg_dataset(
        manifest["name"],
        image_dir=os.path.dirname(images[0]) if images else root,
        gt_dir=labels,
        stuff_classes=manifest["classes"],
        loader=load,
        missing_hint=f"run tools/pseudo_label.py again with --output {root}",
        pseudo_label_keep=manifest["keep"],
        pseudo_label_source=manifest["source"],
    )
    return manifest["name"]


def register_pseudo_label_datasets_from_config(cfg) -> List[str]:
    """Register every folder of ``cfg.DATASETS.PSEUDO_LABEL_ROOTS``; returns the names.

    ``tools/train_net.py`` calls it in every process, so a student config names the dataset in
    ``DATASETS.TRAIN`` and its folder here, without Python."""
    names = []
    for root in cfg.DATASETS.get("PSEUDO_LABEL_ROOTS", ()):
        names.append(register_pseudo_label_dataset(root))
        logger.info(f"Registered pseudo-labelled dataset '{names[-1]}' from {root}")
    return names
