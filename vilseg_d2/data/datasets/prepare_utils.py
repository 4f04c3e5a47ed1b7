"""Helpers of the ``datasets/prepare_*.py`` scripts: label remapping, parallel conversion with a
progress bar, and linking images into Detectron2's layout."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
from typing import Callable, Sequence

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
