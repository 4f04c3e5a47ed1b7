"""Caption training datasets: ``cc3m_train``, ``cc12m_train``, ``coco_captions_train``, and
:func:`register_caption_dataset` for a user's own, in Python or from the config key
``DATASETS.CAPTION_DATASETS`` (:func:`register_caption_datasets_from_config`).

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

from ...errors import MissingFileError
from ..caption_datasets import read_caption_manifest, read_coco_captions, resolve_shards
from .register_sem_seg import remove_if_registered

__all__ = [
    "register_caption_dataset",
    "register_caption_datasets_from_config",
    "parse_caption_dataset_spec",
    "require_file",
    "register_all_caption_datasets",
    "CAPTION_SOURCE_TYPES",
]

logger = logging.getLogger(__name__)

CAPTION_SOURCE_TYPES = ("manifest", "coco", "shards")
# The fields of a DATASETS.CAPTION_DATASETS spec: ``name`` + register_caption_dataset's arguments.
CAPTION_SPEC_FIELDS = (
    "name", "manifest", "shards", "coco_json",
    "image_root", "image_key", "caption_key", "num_samples",
)  # fmt: skip
_CONFIG_KEY = "DATASETS.CAPTION_DATASETS"


def require_file(name: str, path: str, hint: str) -> None:
    """Raise a FileNotFoundError that says how to get dataset ``name`` if ``path`` is missing."""
    if not PathManager.exists(path):
        raise MissingFileError(f"Dataset '{name}': {path} not found; {hint}.")


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
    origin: str = "the register_caption_dataset call",
) -> None:
    """Register an image-caption training dataset under ``name`` (replacing a previous one).

    Give exactly one of ``manifest``, ``coco_json`` or ``shards``::

        register_caption_dataset("my_pairs", manifest="/data/pairs.jsonl", image_root="/data/img")
        register_caption_dataset("my_coco", coco_json=".../captions_train2017.json",
                                 image_root=".../train2017")
        register_caption_dataset("my_shards", shards="/data/laion/{00000..01023}.tar")

    then set ``DATASETS.TRAIN = ("my_pairs",)``. Without Python, name the dataset in
    ``DATASETS.CAPTION_DATASETS`` instead (:func:`register_caption_datasets_from_config`).

    Args:
        name: the dataset name.
        manifest: a JSONL or TSV manifest (see :func:`read_caption_manifest`).
        coco_json: a COCO captions json.
        shards: img2dataset-style webdataset shards: a folder, glob, brace pattern or list.
        image_root: the folder a relative image path of a manifest or COCO json is joined to
            (manifest default: the manifest's own folder; COCO: required). For a manifest
            /data/pairs.jsonl whose paths are ``images/0001.jpg`` with the images in
            /data/images, it is /data (or left out), not /data/images.
        image_key: manifest field/column of the image path.
        caption_key: manifest field/column of the caption.
        num_samples: number of samples of a shard dataset, used only to weight several training
            datasets against each other (default: 10,000 per shard, img2dataset's default).
        missing_hint: what to do when the manifest or json is missing (in the error).
        origin: where the registration came from, named in messages about its paths.
    """
    given = [
        k for k, v in (("manifest", manifest), ("coco_json", coco_json), ("shards", shards)) if v
    ]
    if len(given) != 1:
        raise ValueError(
            f"register_caption_dataset({name!r}) needs exactly one of manifest=, coco_json=, "
            f"shards=; got {given or 'none'}."
        )
    remove_if_registered(name)
    meta = {
        "image_key": image_key,
        "caption_key": caption_key,
        "missing_hint": missing_hint,
        "origin": origin,
    }
    if manifest:
        meta.update(
            caption_source_type="manifest",
            manifest=manifest,
            image_root=image_root or os.path.dirname(os.path.abspath(manifest)),
        )

        def load_manifest() -> list[dict]:
            require_file(name, manifest, missing_hint)
            return read_caption_manifest(
                manifest, image_root, image_key=image_key, caption_key=caption_key
            ).records

        DatasetCatalog.register(name, load_manifest)
    elif coco_json:
        if not image_root:
            raise ValueError(
                f"register_caption_dataset({name!r}, coco_json=...) needs image_root=."
            )
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


def _split_fields(spec: str) -> list[str]:
    """Split ``spec`` at the commas outside ``{...}`` (brace patterns keep theirs)."""
    parts, depth, current = [], 0, []
    for ch in spec:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth <= 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_caption_dataset_spec(spec: str) -> dict:
    """Parse one ``DATASETS.CAPTION_DATASETS`` entry into :func:`register_caption_dataset`'s
    arguments plus ``"name"``.

    Args:
        spec: comma-separated ``field=value`` pairs (fields: :data:`CAPTION_SPEC_FIELDS`), e.g.
            ``"name=my_pairs,manifest=/data/pairs.jsonl,image_root=/data"`` or
            ``"name=my_shards,shards=/data/shards/{00000..00099}.tar"``. Commas inside ``{}``
            belong to the value; values cannot hold other commas.

    Returns:
        dict: ``{"name": str, field: value, ...}``; ``num_samples`` is an int.

    Raises:
        ValueError: a malformed pair, an unknown or repeated field, no name, or a bad
            ``num_samples``.
    """
    example = f"{_CONFIG_KEY} '(\"name=my_pairs,manifest=/data/pairs.jsonl,image_root=/data\",)'"
    if not isinstance(spec, str):
        raise ValueError(
            f"Each entry of {_CONFIG_KEY} must be a string, got {spec!r}; e.g. {example}."
        )
    out: dict = {}
    for part in _split_fields(spec):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ValueError(
                f"{_CONFIG_KEY} entry {spec!r}: {part!r} is not field=value; e.g. {example}."
            )
        if key not in CAPTION_SPEC_FIELDS:
            raise ValueError(
                f"{_CONFIG_KEY} entry {spec!r}: unknown field {key!r}; the fields are "
                f"{', '.join(CAPTION_SPEC_FIELDS)}."
            )
        if key in out:
            raise ValueError(f"{_CONFIG_KEY} entry {spec!r}: field {key!r} given twice.")
        out[key] = value
    if "name" not in out:
        raise ValueError(f"{_CONFIG_KEY} entry {spec!r} has no name=; e.g. {example}.")
    if "num_samples" in out:
        try:
            out["num_samples"] = int(out["num_samples"])
        except ValueError:
            raise ValueError(
                f"{_CONFIG_KEY} entry {spec!r}: num_samples={out['num_samples']} is not an integer."
            ) from None
    return out


def register_caption_datasets_from_config(cfg) -> list[str]:
    """Register the caption datasets of ``cfg.DATASETS.CAPTION_DATASETS`` (see
    :func:`parse_caption_dataset_spec`), replacing registrations of the same names.

    :func:`vilseg_d2.data.build_caption_train_loader` calls it, so the names are known in every
    process that builds a training loader (each process of ``launch``), without Python.

    Returns:
        list[str]: the names registered.
    """
    names = []
    for spec in cfg.DATASETS.get("CAPTION_DATASETS", ()):
        kwargs = parse_caption_dataset_spec(spec)
        name = kwargs.pop("name")
        register_caption_dataset(
            name,
            **kwargs,
            missing_hint=f"check the path in {_CONFIG_KEY} (a relative path is relative to the "
            f"working directory, {os.getcwd()})",
            origin=f"your {_CONFIG_KEY} entry",
        )
        logger.info(f"Registered caption dataset '{name}' from {_CONFIG_KEY}: {spec}")
        names.append(name)
    return names


def register_all_caption_datasets(root: str) -> None:
    """The builtin caption datasets under ``root`` (``$DETECTRON2_DATASETS``)."""
    register_caption_dataset("cc3m_train", shards=os.path.join(root, "cc3m", "*.tar"))
    register_caption_dataset("cc12m_train", shards=os.path.join(root, "cc12m", "*.tar"))
    register_caption_dataset(
        "coco_captions_train",
        coco_json=os.path.join(root, "coco", "annotations", "captions_train2017.json"),
        image_root=os.path.join(root, "coco", "train2017"),
    )
