"""The one way vilseg_d2 registers a semantic-segmentation evaluation dataset."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

__all__ = [
    "register_sem_seg_dataset",
    "remove_if_registered",
    "class_prompt_names",
    "class_prompts",
]


def remove_if_registered(name: str) -> None:
    """Forget ``name`` in both catalogs, so that it can be registered again (another root)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def class_prompt_names(
    stuff_classes: Sequence[str], renames: Optional[Mapping[str, str]] = None
) -> List[str]:
    """The names the text encoder gets for ``stuff_classes``, aligned with them.

    Args:
        stuff_classes: a dataset's class names (what the metrics are named after).
        renames: dataset name -> readable name for the prompts (e.g. "wall-concrete" ->
            "concrete wall"); a class not in it keeps its own name.

    Returns:
        One name per class, in the order of ``stuff_classes``.

    Raises:
        ValueError: ``renames`` names a class that is not in ``stuff_classes``, or two classes
            would get the same prompt name (their text embeddings could not tell them apart).
    """
    renames = dict(renames or {})
    unknown = sorted(set(renames) - set(stuff_classes))
    if unknown:
        raise ValueError(f"Prompt names are given for {unknown}, which are not in stuff_classes.")
    names = [renames.get(c, c) for c in stuff_classes]
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        raise ValueError(
            f"Several classes would share the prompt names {repeated}; give each class its own."
        )
    return names


def class_prompts(dataset_name: str) -> Dict[str, str]:
    """Class name -> prompt name of a registered dataset, from its metadata's ``prompt_names``
    (the class names themselves when it has none, e.g. Detectron2's own datasets)."""
    meta = MetadataCatalog.get(dataset_name)
    classes = list(meta.stuff_classes)
    prompts = list(meta.get("prompt_names", None) or classes)
    if len(prompts) != len(classes):
        raise ValueError(
            f"{dataset_name}: prompt_names has {len(prompts)} names for {len(classes)} "
            f"stuff_classes; it must give one name per class, in the same order."
        )
    return dict(zip(classes, prompts))


def register_sem_seg_dataset(
    name: str,
    *,
    image_dir: str,
    gt_dir: str,
    stuff_classes: Sequence[str],
    unseen_classes: Sequence[str] = (),
    prompt_names: Optional[Mapping[str, str]] = None,
    stuff_colors: Optional[Sequence[Sequence[int]]] = None,
    image_ext: str = "jpg",
    loader: Optional[Callable[[], list]] = None,
    **extra_metadata,
) -> None:
    """Register images + PNG label maps in Detectron2's idiom (``load_sem_seg``, ``ignore_label``
    255, ``evaluator_type`` "sem_seg") plus ViL-Seg's ``unseen_classes`` and ``prompt_names``
    (one per class of ``stuff_classes``, the name the text encoder gets for it).

    Args:
        name: the dataset name.
        image_dir, gt_dir: folders of images and of label PNGs with the same file stems.
        stuff_classes: class names, index = label value.
        unseen_classes: the zero-shot protocol's unseen classes (names from ``stuff_classes``).
        prompt_names: readable names for the text prompts of the classes whose dataset names
            are not (see :func:`class_prompt_names`); metrics keep ``stuff_classes``.
        stuff_colors: optional RGB colour per class, for pictures.
        image_ext: extension of the images.
        loader: returns the records (default: ``load_sem_seg(gt_dir, image_dir)``).
        extra_metadata: more metadata.
    """
    unknown = [c for c in unseen_classes if c not in stuff_classes]
    if unknown:
        raise ValueError(f"{name}: unseen classes {unknown} are not in stuff_classes.")
    prompts = class_prompt_names(stuff_classes, prompt_names)
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
        prompt_names=prompts,
        **extra_metadata,
    )
    if stuff_colors is not None:
        meta["stuff_colors"] = [list(c) for c in stuff_colors]
    MetadataCatalog.get(name).set(**meta)
