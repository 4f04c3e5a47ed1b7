"""The one way vilseg_d2 registers a semantic-segmentation evaluation dataset, and the one check
that a name given for evaluation is such a dataset (:func:`require_sem_seg_dataset`)."""

from __future__ import annotations

import difflib
import os
from collections import Counter
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg
from detectron2.utils.file_io import PathManager

from ...errors import MissingFileError, UserError

__all__ = [
    "register_sem_seg_dataset",
    "remove_if_registered",
    "class_prompt_names",
    "class_prompts",
    "require_sem_seg_dataset",
    "sem_seg_dataset_names",
    "prepare_hint",
    "DatasetNotRegisteredError",
    "SemSegDatasetNotPreparedError",
]

_HOW_TO_REGISTER = (
    "To evaluate a dataset of your own, register it with vilseg_d2.data.datasets.register_sem_seg."
    "register_sem_seg_dataset(name, image_dir=..., gt_dir=..., stuff_classes=[...]) "
    "(vilseg_d2/data/datasets/register_sem_seg.py; see datasets/README.md) in the process that "
    "evaluates, e.g. next to the `import vilseg_d2` of a copy of tools/train_net.py"
)


class DatasetNotRegisteredError(UserError, KeyError):
    """A dataset name that is not registered (Detectron2's ``DatasetCatalog`` raises a KeyError
    too); printed as its message (:class:`UserError`), where a KeyError would print its repr."""


class SemSegDatasetNotPreparedError(MissingFileError):
    """A registered semantic-segmentation dataset whose folders are missing or empty."""


def sem_seg_dataset_names() -> List[str]:
    """The registered names that can be evaluated: metadata ``evaluator_type`` "sem_seg" or
    ``stuff_classes``, sorted."""
    return sorted(
        n
        for n in DatasetCatalog.list()
        if MetadataCatalog.get(n).get("evaluator_type", None) == "sem_seg"
        or MetadataCatalog.get(n).get("stuff_classes", None)
    )


def require_sem_seg_dataset(name: str):
    """The metadata of ``name``, a registered semantic-segmentation dataset, or an error saying
    what to do.

    ``MetadataCatalog.get`` would create an empty entry for any name (a misspelt one included)
    and fail later on its missing ``stuff_classes``; ``DatasetCatalog`` knows what is registered.

    Args:
        name: a dataset name, e.g. from ``DATASETS.TEST``.

    Returns:
        detectron2.data.catalog.Metadata: its metadata, with ``stuff_classes``.

    Raises:
        DatasetNotRegisteredError: ``name`` is not registered; the message lists close matches
            among :func:`sem_seg_dataset_names` (all of them when none is close) and how to
            register a dataset.
        ValueError: ``name`` is registered but has no ``stuff_classes`` (not a
            semantic-segmentation dataset, e.g. a caption dataset).
    """
    if name not in DatasetCatalog:
        known = sem_seg_dataset_names()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        listing = (
            f"Did you mean {' or '.join(repr(c) for c in close)}?"
            if close
            else f"The registered semantic-segmentation datasets are: {', '.join(known)}."
        )
        raise DatasetNotRegisteredError(
            f"Dataset {name!r} is not registered (check the names of DATASETS.TEST). {listing} "
            f"{_HOW_TO_REGISTER}."
        )
    meta = MetadataCatalog.get(name)
    if not meta.get("stuff_classes", None):
        raise ValueError(
            f"Dataset {name!r} is registered but is not a semantic-segmentation dataset (its "
            f"metadata has no stuff_classes; evaluator_type "
            f"{meta.get('evaluator_type', None)!r}). Evaluate one of: "
            f"{', '.join(sem_seg_dataset_names())}. {_HOW_TO_REGISTER}."
        )
    return meta


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
    (the class names themselves when it has none, e.g. Detectron2's own datasets).

    Raises:
        DatasetNotRegisteredError, ValueError: as :func:`require_sem_seg_dataset`.
    """
    meta = require_sem_seg_dataset(dataset_name)
    classes = list(meta.stuff_classes)
    prompts = list(meta.get("prompt_names", None) or classes)
    if len(prompts) != len(classes):
        raise ValueError(
            f"{dataset_name}: prompt_names has {len(prompts)} names for {len(classes)} "
            f"stuff_classes; it must give one name per class, in the same order."
        )
    return dict(zip(classes, prompts))


def prepare_hint(script: str, root: str, needs: str) -> str:
    """The ``missing_hint`` of a dataset made by ``datasets/<script>`` from the archives ``needs``
    names (in the words of datasets/README.md)."""
    return (
        f"run `python datasets/{script} --root {root}` once {needs} (datasets/README.md, "
        f"'Evaluation datasets')"
    )


def _root_note(root: str) -> str:
    """Where ``root`` stands against ``$DETECTRON2_DATASETS`` as it is set now."""
    env = os.getenv("DETECTRON2_DATASETS")
    current = os.path.abspath(os.path.expanduser(env or "datasets"))
    now = f"now {env!r}" if env is not None else "unset, so ./datasets"
    if os.path.abspath(root) == current:
        where = f"The dataset root is $DETECTRON2_DATASETS ({now}: {current})"
    else:
        where = (
            f"This dataset was registered under {os.path.abspath(root)}; "
            f"$DETECTRON2_DATASETS is {now} ({current})"
        )
    return f"{where}; set $DETECTRON2_DATASETS to the folder that holds your datasets."


def _require_prepared(
    name: str, folders: Sequence[str], hint: str, root: Optional[str] = None
) -> None:
    """Raise :class:`SemSegDatasetNotPreparedError` if a folder of ``name`` is missing or empty."""
    for folder in folders:
        if not PathManager.isdir(folder):
            problem = f"the folder {folder} does not exist"
        elif not PathManager.ls(folder):
            problem = f"the folder {folder} is empty"
        else:
            continue
        note = f" {_root_note(root)}" if root else ""
        raise SemSegDatasetNotPreparedError(
            f"Dataset {name!r} is registered but not prepared: {problem}; {hint}.{note}"
        )


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
    missing_hint: str = "see datasets/README.md",
    root: Optional[str] = None,
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
        missing_hint: what to do when a folder is missing or empty at load time, e.g. "run
            `python datasets/prepare_voc_sem_seg.py`" (also the metadata ``missing_hint``).
        root: the dataset root the folders were registered under (``$DETECTRON2_DATASETS`` for
            vilseg_d2's own datasets), named with that variable's current value in the error.
        extra_metadata: more metadata.

    Registration reads nothing; loading (``DatasetCatalog.get(name)``) first checks that both
    folders hold files, else raises :class:`SemSegDatasetNotPreparedError` naming the folder,
    ``missing_hint`` and the root.
    """
    unknown = [c for c in unseen_classes if c not in stuff_classes]
    if unknown:
        raise ValueError(f"{name}: unseen classes {unknown} are not in stuff_classes.")
    prompts = class_prompt_names(stuff_classes, prompt_names)
    remove_if_registered(name)
    load = loader or (lambda: load_sem_seg(gt_dir, image_dir, gt_ext="png", image_ext=image_ext))

    def load_prepared() -> list:
        _require_prepared(name, (image_dir, gt_dir), missing_hint, root)
        return load()

    DatasetCatalog.register(name, load_prepared)
    meta = dict(
        image_root=image_dir,
        sem_seg_root=gt_dir,
        evaluator_type="sem_seg",
        ignore_label=255,
        stuff_classes=list(stuff_classes),
        unseen_classes=list(unseen_classes),
        prompt_names=prompts,
        missing_hint=missing_hint,
        **extra_metadata,
    )
    if stuff_colors is not None:
        meta["stuff_colors"] = [list(c) for c in stuff_colors]
    MetadataCatalog.get(name).set(**meta)
