"""Caption training datasets: ``cc3m_train``, ``cc12m_train``, ``coco_captions_train``, and
:func:`register_caption_dataset` for a user's own.

The metadata of a caption dataset tells :func:`vilseg_d2.data.build_caption_train_loader` how to
read it: ``caption_source_type`` ("manifest" | "coco" | "shards") plus the paths.
``DatasetCatalog.get(name)`` returns the records for "manifest" / "coco" and one
``{"shard": path}`` per shard for "shards" (shards are streamed, never loaded).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from ..caption_datasets import read_caption_manifest, read_coco_captions, resolve_shards
from .register_sem_seg import remove_if_registered

__all__ = ["register_caption_dataset", "require_file", "register_all_caption_datasets", "CAPTION_SOURCE_TYPES"]

logger = logging.getLogger(__name__)

CAPTION_SOURCE_TYPES = ("manifest", "coco", "shards")


def require_file(name: str, path: str, hint: str) -> None:
    """Raise a FileNotFoundError that says how to get dataset ``name`` if ``path`` is missing."""
    if not PathManager.exists(path):
        raise FileNotFoundError(f"Dataset '{name}': {path} not found; {hint}.")


def register_caption_dataset(
    name: str,
    *,
    manifest: str | None = None,
    coco_json: str | None = None,
    shards: str | Sequence[str] | None = None,
    image_root: str | None = None,
    image_key: str = "file_name",
    caption_key: str = "caption",
    num_samples: int | None = None,
    missing_hint: str = "see datasets/README.md",
) -> None:
    """Register an image-caption training dataset under ``name`` (replacing a previous one).

    Give exactly one of ``manifest``, ``coco_json`` or ``shards``::

        register_caption_dataset("my_pairs", manifest="/data/pairs.jsonl", image_root="/data/img")
        register_caption_dataset("my_coco", coco_json=".../captions_train2017.json",
                                 image_root=".../train2017")
        register_caption_dataset("my_shards", shards="/data/laion/{00000..01023}.tar")

    then set ``DATASETS.TRAIN = ("my_pairs",)``.

    Args:
        name: the dataset name.
        manifest: a JSONL or TSV manifest (see :func:`read_caption_manifest`).
        coco_json: a COCO captions json.
        shards: img2dataset-style webdataset shards: a folder, glob, brace pattern or list.
        image_root: folder of the images of a manifest (default: the manifest's folder) or of
            a COCO json (required).
        image_key: manifest field/column of the image path.
        caption_key: manifest field/column of the caption.
        num_samples: number of samples of a shard dataset, used only to weight several training
            datasets against each other (default: 10,000 per shard, img2dataset's default).
    """
    given = [k for k, v in (("manifest", manifest), ("coco_json", coco_json), ("shards", shards)) if v]
    if len(given) != 1:
        raise ValueError(
            f"register_caption_dataset({name!r}) needs exactly one of manifest=, coco_json=, "
            f"shards=; got {given or 'none'}."
        )
    remove_if_registered(name)
    meta = {"image_key": image_key, "caption_key": caption_key, "missing_hint": missing_hint}
    if manifest:
        meta.update(caption_source_type="manifest", manifest=manifest,
                    image_root=image_root or os.path.dirname(os.path.abspath(manifest)))

        def load_manifest() -> list[dict]:
            require_file(name, manifest, missing_hint)
            return read_caption_manifest(
                manifest, image_root, image_key=image_key, caption_key=caption_key
            ).records

        DatasetCatalog.register(name, load_manifest)
    elif coco_json:
        if not image_root:
            raise ValueError(f"register_caption_dataset({name!r}, coco_json=...) needs image_root=.")
        meta.update(caption_source_type="coco", coco_json=coco_json, image_root=image_root)

        def load_coco() -> list[dict]:
            require_file(name, coco_json, missing_hint)
            return read_coco_captions(coco_json, image_root)

        DatasetCatalog.register(name, load_coco)
    else:
        shard_spec = shards if isinstance(shards, str) else list(shards)
        meta.update(caption_source_type="shards", shards=shard_spec)
        DatasetCatalog.register(name, lambda: [{"shard": s} for s in resolve_shards(shard_spec)])
    if num_samples is not None:
        meta["num_samples"] = int(num_samples)
    MetadataCatalog.get(name).set(**meta)


def register_all_caption_datasets(root: str) -> None:
    """The builtin caption datasets under ``root`` (``$DETECTRON2_DATASETS``)."""
    register_caption_dataset("cc3m_train", shards=os.path.join(root, "cc3m", "*.tar"))
    register_caption_dataset("cc12m_train", shards=os.path.join(root, "cc12m", "*.tar"))
    register_caption_dataset(
        "coco_captions_train",
        coco_json=os.path.join(root, "coco", "annotations", "captions_train2017.json"),
        image_root=os.path.join(root, "coco", "train2017"),
    )
