"""Dataset registrations; importing this registers every dataset name of vilseg_d2.

Roots are under ``$DETECTRON2_DATASETS`` (default ``datasets``), as Detectron2's builtin ones.
ADE20K is Detectron2's builtin ``ade20k_sem_seg_val``.
"""

import os

from .register_captions import register_all_caption_datasets, register_caption_dataset
from .register_coco_stuff import register_coco_stuff_164k
from .register_pascal_context import register_pascal_context
from .register_pseudo_labels import (
    register_pseudo_label_dataset,
    register_pseudo_label_datasets_from_config,
)
from .register_synthetic import default_synthetic_root, register_synthetic_world
from .register_voc import register_voc_2012

__all__ = [
    "register_caption_dataset",
    "register_pseudo_label_dataset",
    "register_pseudo_label_datasets_from_config",
    "register_synthetic_world",
    "default_synthetic_root",
    "register_all",
]


def register_all(root: str) -> None:
    """Register every dataset of vilseg_d2 under ``root``."""
    register_all_caption_datasets(root)
    register_voc_2012(root)
    register_pascal_context(root)
    register_coco_stuff_164k(root)
    register_synthetic_world(os.path.join(root, "synthetic"))


register_all(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
