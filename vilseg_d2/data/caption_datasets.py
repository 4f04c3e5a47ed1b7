"""Readers of image-caption training data, in the formats users of CC3M / CC12M / COCO have.

* a JSONL or TSV manifest plus an image root (:func:`read_caption_manifest`);
* COCO captions json, e.g. ``captions_train2017.json`` (:func:`read_coco_captions`; every
  caption of an image is kept, the mapper draws one per step);
* webdataset tar shards as written by img2dataset (``00000.tar`` with ``key.jpg`` + ``key.txt``):
  :func:`resolve_shards` lists them, :func:`shard_sample_to_record` turns a webdataset sample
  into a record; the streaming itself is in :mod:`vilseg_d2.data.caption_stream`.

Records are dicts with ``"file_name"`` (path) or ``"image_bytes"``, and ``"caption"`` or
``"captions"``. Images and captions are validated later, by the mapper, so that bad records are
skipped and counted in one place.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

from detectron2.utils.file_io import PathManager

from ..errors import MissingFileError

__all__ = [
    "ManifestContents",
    "read_caption_manifest",
    "check_image_files",
    "read_coco_captions",
    "resolve_shards",
    "is_local_path",
    "shard_sample_to_record",
    "SHARD_IMAGE_EXTENSIONS",
]

logger = logging.getLogger(__name__)

# Member extensions of a shard sample that hold the image, in order of preference.
SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
# Bad manifest lines logged one by one (the rest only in the summary).
_NUM_BAD_LINES_LOGGED = 10
# Records whose image file check_image_files looks for before training.
NUM_IMAGE_FILES_CHECKED = 20


@dataclass
class ManifestContents:
    """What :func:`read_caption_manifest` read.

    Attributes:
        records: ``{"file_name": str, "caption": object}`` per good line, in file order.
        num_lines: non-blank lines (header excluded).
        bad_lines: ``(line_number, reason)`` for each line that could not be used (1-based).
        image_root: the folder relative image paths were joined to.
    """

    records: list[dict] = field(default_factory=list)
    num_lines: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    image_root: str = ""


def _manifest_format(path: str, manifest_format: str | None) -> str:
    if manifest_format:
        fmt = manifest_format.lower()
    else:
        ext = os.path.splitext(path)[1].lower()
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".tsv": "tsv"}.get(ext, "")
    if fmt not in ("jsonl", "tsv"):
        raise ValueError(
            f"Cannot tell the format of caption manifest {path}: name it *.jsonl or *.tsv, or "
            f"pass manifest_format='jsonl' | 'tsv'."
        )
    return fmt


def read_caption_manifest(
    path: str,
    image_root: str | None = None,
    *,
    image_key: str = "file_name",
    caption_key: str = "caption",
    manifest_format: str | None = None,
) -> ManifestContents:
    """Read a JSONL or TSV caption manifest.

    JSONL: one JSON object per line with ``image_key`` (image path) and ``caption_key``.
    TSV: a header line naming the columns (it must contain ``image_key`` and ``caption_key``),
    then one tab-separated record per line (open_clip's CSV convention is
    ``image_key="filepath", caption_key="title"``). Relative image paths are joined to
    ``image_root`` (default: the manifest's folder). Blank lines are ignored; a line that is not
    UTF-8, not JSON, not an object, or lacks the image path is skipped and reported with its
    line number.

    Args:
        path: the manifest file.
        image_root: folder the image paths are relative to.
        image_key: field/column of the image path.
        caption_key: field/column of the caption.
        manifest_format: "jsonl" or "tsv"; default from the file extension.

    Returns:
        ManifestContents: the records and the bad lines.
    """
    fmt = _manifest_format(path, manifest_format)
    if image_root is None:
        image_root = os.path.dirname(os.path.abspath(path))
    out = ManifestContents(image_root=image_root)
    columns: list[str] | None = None
    with PathManager.open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                line = None
            if fmt == "tsv" and columns is None:
                if line is None:
                    raise ValueError(f"The header line of TSV manifest {path} is not UTF-8 text.")
                columns = line.split("\t")
                missing = [k for k in (image_key, caption_key) if k not in columns]
                if missing:
                    raise ValueError(
                        f"TSV manifest {path} has columns {columns} but not {missing}: its first "
                        f"line must name the columns; pass image_key= / caption_key= to match."
                    )
                continue
            out.num_lines += 1
            if line is None:
                out.bad_lines.append((lineno, "not UTF-8 text"))
                continue
            if fmt == "jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    out.bad_lines.append((lineno, f"not valid JSON ({e.msg})"))
                    continue
                if not isinstance(obj, dict):
                    out.bad_lines.append((lineno, f"a JSON {type(obj).__name__}, not an object"))
                    continue
            else:
                values = line.split("\t")
                if len(values) != len(columns):
                    out.bad_lines.append(
                        (
                            lineno,
                            f"{len(values)} tab-separated fields, the header has {len(columns)}",
                        )
                    )
                    continue
                obj = dict(zip(columns, values))
            file_name = obj.get(image_key)
            if not isinstance(file_name, str) or not file_name:
                out.bad_lines.append((lineno, f"no image path in field {image_key!r}"))
                continue
            out.records.append(
                {"file_name": os.path.join(image_root, file_name), "caption": obj.get(caption_key)}
            )
    for lineno, reason in out.bad_lines[:_NUM_BAD_LINES_LOGGED]:
        logger.warning(f"Skipped line {lineno} of caption manifest {path}: {reason}")
    if out.bad_lines:
        logger.warning(
            f"Caption manifest {path}: skipped {len(out.bad_lines)} of {out.num_lines} lines "
            f"(lines {', '.join(str(n) for n, _ in out.bad_lines[:20])}"
            f"{', ...' if len(out.bad_lines) > 20 else ''})."
        )
    logger.info(
        f"Read {len(out.records)} image-caption records from {path} (image_root {image_root})."
    )
    return out


def _fix_for_missing_images(raw: str, image_root: str, listing: str) -> str:
    """What to change when the image ``raw`` (as written in ``listing``) is not under
    ``image_root``."""
    if os.path.isabs(raw):
        return (
            f"The path in {listing} is absolute, so image_root is not used: the images are not at "
            f"those paths on this machine. Write the paths relative to one folder and give that "
            f"folder as image_root."
        )
    root = os.path.normpath(os.path.abspath(image_root))
    components = raw.replace("\\", "/").split("/")
    first = components[0]
    listing_dir = os.path.dirname(os.path.abspath(listing))
    if len(components) > 1 and os.path.basename(root) == first:  # the folder doubled
        parent = os.path.dirname(root)
        found = os.path.isfile(os.path.join(parent, raw))
        return (
            f"image_root {image_root} already ends with '{first}/', the first folder of the "
            f"paths in {listing} (e.g. '{raw}'), so that folder appears twice. Set "
            f"image_root={parent}, the folder the paths are relative to"
            + (f" ({os.path.join(parent, raw)} exists)." if found else ".")
        )
    if root != listing_dir and os.path.isfile(os.path.join(listing_dir, raw)):
        return (
            f"The image is at {os.path.join(listing_dir, raw)}, relative to the folder of "
            f"{listing}: set image_root={listing_dir} (for a manifest, the default when "
            f"image_root is left out)."
        )
    return (
        f"Relative paths are joined to image_root: set image_root to the folder that holds "
        f"'{raw}' (for '{first}/...', the folder containing '{first}')."
    )


def check_image_files(
    dataset_name: str,
    records: Sequence[dict],
    image_root: str,
    listing: str,
    *,
    origin: str = "",
    num_checked: int = NUM_IMAGE_FILES_CHECKED,
) -> None:
    """Check, before training, that the first records' image files exist.

    All of them missing is a wrong ``image_root`` (or paths), not a few bad records: that is an
    error naming the first missing path, the image root and the fix (e.g. a folder doubled as in
    ``image_root=/data/images`` with paths ``images/0001.jpg``). Some missing is a warning: those
    records are skipped and counted during training.

    Args:
        dataset_name: the registered name, for messages.
        records: records with ``"file_name"`` = ``image_root`` joined with the listed path.
        image_root: the folder relative paths were joined to.
        listing: the manifest or COCO json the paths come from.
        origin: where ``image_root`` is set (e.g. "your DATASETS.CAPTION_DATASETS entry"),
            named after the fix.
        num_checked: how many records are checked.

    Raises:
        FileNotFoundError: none of the checked image files exists.
    """
    paths = [r["file_name"] for r in records[:num_checked] if isinstance(r.get("file_name"), str)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return
    if len(missing) < len(paths):
        logger.warning(
            f"Caption dataset '{dataset_name}': {len(missing)} of the first {len(paths)} image "
            f"files listed in {listing} are missing (first: {missing[0]}); such records are "
            f"skipped and counted during training."
        )
        return
    prefix = os.path.join(image_root, "")
    raw = missing[0][len(prefix) :] if missing[0].startswith(prefix) else missing[0]
    joined = (
        f"'{raw}' joined to image_root {image_root}" if raw != missing[0] else "an absolute path"
    )
    raise MissingFileError(
        f"Caption dataset '{dataset_name}': none of the first {len(paths)} image files listed in "
        f"{listing} exist, e.g. {missing[0]} ({joined}). "
        f"{_fix_for_missing_images(raw, image_root, listing)}"
        + (f" (image_root= is set in {origin}.)" if origin else "")
    )


def read_coco_captions(json_file: str, image_root: str) -> list[dict]:
    """Read a COCO captions json (e.g. ``annotations/captions_train2017.json``).

    Args:
        json_file: the annotation file.
        image_root: the image folder (e.g. ``coco/train2017``).

    Returns:
        list[dict]: one record per image with at least one caption:
        ``{"file_name", "captions": list[str], "image_id", "height", "width"}``.
    """
    with PathManager.open(json_file, "r") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(
            f"{json_file} is not a COCO captions file (it needs 'images' and 'annotations')."
        )
    captions = collections.defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(ann.get("caption"))
    records = []
    for img in data["images"]:
        caps = captions.get(img["id"])
        if not caps:
            continue
        rec = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "captions": caps,
            "image_id": img["id"],
        }
        if "height" in img and "width" in img:
            rec["height"], rec["width"] = img["height"], img["width"]
        records.append(rec)
    num_without = len(data["images"]) - len(records)
    logger.info(
        f"Read {len(records)} images with {sum(len(r['captions']) for r in records)} captions "
        f"from {json_file}"
        + (f" ({num_without} images without captions left out)." if num_without else ".")
    )
    return records


def is_local_path(url: str) -> bool:
    """Whether a shard name is a local file (not ``pipe:``, ``http://``, ``s3://`` ...)."""
    return "://" not in url and not url.startswith("pipe:")


def resolve_shards(shards: str | Sequence[str]) -> list[str]:
    """Expand a shard specification into the list of shard names.

    Args:
        shards: a list of paths/URLs; or one string that is a folder (all ``*.tar`` in it), a
            glob (``cc3m/*.tar``), a brace pattern (``cc3m/{00000..00331}.tar``, webdataset's
            notation), or several of these joined by ``::``.

    Returns:
        list[str]: shard names, sorted for folders and globs, in pattern order for braces.
    """
    if not isinstance(shards, str):
        return [str(s) for s in shards]
    from webdataset.shardlists import expand_urls  # braces, ``::`` and env vars

    out: list[str] = []
    for url in expand_urls(shards):
        if is_local_path(url) and os.path.isdir(url):
            out.extend(sorted(glob.glob(os.path.join(url, "*.tar"))))
        elif is_local_path(url) and glob.has_magic(url):
            out.extend(sorted(glob.glob(url)))
        else:
            out.append(url)
    return out


def shard_sample_to_record(sample: dict) -> dict:
    """Turn a webdataset sample (``{"__key__", "__url__", "jpg": bytes, "txt": bytes, ...}``)
    into a caption record ``{"image_bytes", "caption", "__key__", "__url__"}``.

    A sample without an image or caption member gives a record without that key; the mapper
    rejects it. The caption comes from ``.txt``, else from the ``"caption"`` of ``.json``
    (both written by img2dataset).
    """
    rec = {"__key__": sample.get("__key__", "?"), "__url__": sample.get("__url__", "?")}
    for ext in SHARD_IMAGE_EXTENSIONS:
        if ext in sample:
            rec["image_bytes"] = sample[ext]
            break
    if "txt" in sample:
        rec["caption"] = sample["txt"]
    elif "json" in sample:
        try:
            meta = json.loads(sample["json"])
            if isinstance(meta, dict) and "caption" in meta:
                rec["caption"] = meta["caption"]
        except (ValueError, UnicodeDecodeError):
            pass
    return rec
