"""Helpers of the ``datasets/prepare_*.py`` scripts: their command line, label remapping,
parallel conversion with a progress bar, linking images into Detectron2's layout, and the checks
that a split is whole before and after it is written (:class:`SplitCheckError`)."""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import sys
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = [
    "lookup_table",
    "write_label_png",
    "read_label_png",
    "link_or_copy",
    "run_tasks",
    "read_ids",
    "prepare_parser",
    "SplitCheckError",
    "check_split_size",
    "check_inputs",
    "check_outputs",
    "run_script",
]

logger = logging.getLogger(__name__)


def lookup_table(mapping: dict[int, int], size: int = 256, default: int = 255) -> np.ndarray:
    """A LUT (size,) uint8 with ``lut[src] = dst`` for the mapping and ``default`` elsewhere."""
    lut = np.full(size, default, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def read_label_png(path: str) -> np.ndarray:
    """A label PNG (palette 'P' or grayscale 'L') as H×W uint8 indices (the palette is ignored)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(
                f"{path}: a label PNG must be indexed (P) or grayscale (L), not {img.mode}; "
                f"use the masks of the official archive."
            )
        return np.array(img, dtype=np.uint8)


def write_label_png(path: str, label: np.ndarray) -> None:
    """Write H×W uint8 class ids as a grayscale PNG (Detectron2's sem-seg ground truth)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(label, dtype=np.uint8), mode="L").save(path)


def link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (same file system), else copy it."""
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src} not found: is the archive fully extracted?")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def read_ids(path: str) -> list[str]:
    """Image ids of a VOC-style split file (one per line; extra columns ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is the archive fully extracted?")
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


def run_tasks(fn: Callable, tasks: Sequence, *, workers: int, desc: str) -> None:
    """``fn(task)`` for every task, in ``workers`` processes (0/1: here), with a progress bar."""
    if workers <= 1:
        for t in tqdm(tasks, desc=desc, unit="img"):
            fn(t)
        return
    methods = mp.get_all_start_methods()
    with mp.get_context("fork" if "fork" in methods else None).Pool(workers) as pool:
        for _ in tqdm(
            pool.imap_unordered(fn, tasks, chunksize=16), total=len(tasks), desc=desc, unit="img"
        ):
            pass


class SplitCheckError(RuntimeError):
    """A split that is not whole: the message names the short file or folder and the fix."""


def prepare_parser(doc: str, expected: int) -> argparse.ArgumentParser:
    """The command line every prepare script shares: ``--root``, ``--workers`` and
    ``--expected-images``.

    Args:
        doc: the script's docstring (its first paragraph is the description).
        expected: the number of images of the official split (the default of
            ``--expected-images``).
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    parser.add_argument(
        "--expected-images",
        type=int,
        default=expected,
        help=f"images the split must have (default {expected}, the official count; 0: any)",
    )
    return parser


def check_split_size(ids: Sequence[str], expected: int, *, listing: str, fix: str) -> None:
    """Raise :class:`SplitCheckError` unless ``ids`` has ``expected`` images (0: any number).

    Args:
        ids: the image ids of the split.
        expected: the official number of images.
        listing: what lists them, as the subject of a sentence ("…/val.txt lists").
        fix: what to do about it.
    """
    if expected and len(ids) != expected:
        raise SplitCheckError(
            f"{listing} {len(ids)} images, not the {expected} of the official split; {fix} (or "
            f"pass --expected-images {len(ids)} to prepare this subset on purpose)."
        )


def check_inputs(
    ids: Sequence[str], folder: str, ext: str, *, what: str, listing: str, fix: str
) -> None:
    """Raise :class:`SplitCheckError` if an id of the split has no ``folder/<id><ext>``.

    Args:
        ids: the image ids of the split.
        folder, ext: where each id's file must be, and its extension (".jpg").
        what: the kind of file, for the message ("JPEG").
        listing: what lists the ids, as the subject of a sentence ("…/val.txt lists").
        fix: what to do about it.
    """
    missing = [i + ext for i in ids if not os.path.isfile(os.path.join(folder, i + ext))]
    if missing:
        raise SplitCheckError(
            f"{listing} {len(ids)} images but {len(missing)} of them have no {what} in "
            f"{folder}: first missing {', '.join(missing[:3])}; {fix}."
        )


def check_outputs(ids: Iterable[str], outputs: Sequence[tuple[str, str]]) -> None:
    """Raise :class:`SplitCheckError` unless each output folder holds exactly one file per id.

    Args:
        ids: the image ids of the split.
        outputs: ``(folder, extension)`` of every folder the script wrote.
    """
    ids = set(ids)
    for folder, ext in outputs:
        names = os.listdir(folder) if os.path.isdir(folder) else []
        written = {n[: -len(ext)] for n in names if n.endswith(ext)}
        short = sorted(ids - written)
        if short:
            raise SplitCheckError(
                f"{folder} holds {len(ids) - len(short)} of the {len(ids)} {ext} files of the "
                f"split: first missing {', '.join(s + ext for s in short[:3])}; run the script "
                f"again."
            )
        extra = sorted(written - ids)
        if extra:
            raise SplitCheckError(
                f"{folder} holds {len(extra)} {ext} files that are not in the split (e.g. "
                f"{extra[0] + ext}), left by an earlier run: delete {folder} and run the script "
                f"again."
            )


def run_script(main: Callable[[], object]) -> int:
    """Run a prepare script's ``main`` as a command: 0 on success, 1 with the message on stderr
    when the inputs or the written split are not whole."""
    try:
        main()
    except (SplitCheckError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
