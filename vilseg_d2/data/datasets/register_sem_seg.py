"""The one way vilseg_d2 registers a semantic-segmentation evaluation dataset."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

__all__ = ["register_sem_seg_dataset", "remove_if_registered"]


def remove_if_registered(name: str) -> None:
    """Forget ``name`` in both catalogs, so that it can be registered again (another root)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def register_sem_seg_dataset(
    name: str,
    *,
    image_dir: str,
    gt_dir: str,
    stuff_classes: Sequence[str],
    unseen_classes: Sequence[str] = (),
    stuff_colors: Optional[Sequence[Sequence[int]]] = None,
    image_ext: str = "jpg",
    loader: Optional[Callable[[], list]] = None,
    **extra_metadata,
) -> None:
    """Register images + PNG label maps in Detectron2's idiom (``load_sem_seg``, ``ignore_label``
    255, ``evaluator_type`` "sem_seg") plus ViL-Seg's ``unseen_classes``.

    Args:
        name: the dataset name.
        image_dir, gt_dir: folders of images and of label PNGs with the same file stems.
        stuff_classes: class names, index = label value.
        unseen_classes: the zero-shot protocol's unseen classes (names from ``stuff_classes``).
        stuff_colors: optional RGB colour per class, for pictures.
        image_ext: extension of the images.
        loader: returns the records (default: ``load_sem_seg(gt_dir, image_dir)``).
        extra_metadata: more metadata.
    """
    unknown = [c for c in unseen_classes if c not in stuff_classes]
    if unknown:
        raise ValueError(f"{name}: unseen classes {unknown} are not in stuff_classes.")
    remove_if_registered(name)
    DatasetCatalog.register(
        name, loader or (lambda: load_sem_seg(gt_dir, image_dir, gt_ext="png", image_ext=image_ext))
    )
    meta = dict(
        image_root=image_dir,
        sem_seg_root=gt_dir,
        evaluator_type="sem_seg",
        ignore_label=255,
        stuff_classes=list(stuff_classes),
        unseen_classes=list(unseen_classes),
        **extra_metadata,
    )
    if stuff_colors is not None:
        meta["stuff_colors"] = [list(c) for c in stuff_colors]
    MetadataCatalog.get(name).set(**meta)
