#!/usr/bin/env python
"""Prepare PASCAL Context val (5105 images) for ``pascal_context_59_sem_seg_val`` and
``pascal_context_60_sem_seg_val``.

Input under $DETECTRON2_DATASETS/pascal_context (the official archives):
    VOCdevkit/VOC2010/JPEGImages/*.jpg               # VOCtrainval_03-May-2010.tar
    VOCdevkit/VOC2010/ImageSets/Main/val.txt         # the 5105 val ids
    trainval/*.mat                                   # trainval.tar.gz of PASCAL Context: LabelMap
    labels.txt                                       # the 459 classes, "id: name" per line
Output under pascal_context/:
    images_detectron2/val/*.jpg                      # hard links (or copies)
    annotations_detectron2/pc59_val/*.png            # 0..58 = the 59 classes, 255 = other
    annotations_detectron2/pc60_val/*.png            # 0 = background (all other), 1..59

Needs scipy (``pip install scipy``) to read the .mat files.

The split is checked before and after: val.txt must list 5105 ids, each with its JPEG and .mat,
and each output folder must end up with exactly those files; otherwise the script names the short
file or folder and exits with status 1.

Usage: python datasets/prepare_pascal_context.py [--root $DETECTRON2_DATASETS] [--workers N]
           [--labels labels.txt] [--expected-images 5105]
"""

import functools
import os
import re
import sys

import numpy as np

from vilseg_d2.data.datasets.prepare_utils import (
    check_inputs,
    check_outputs,
    check_split_size,
    link_or_copy,
    prepare_parser,
    read_ids,
    run_script,
    run_tasks,
    write_label_png,
)
from vilseg_d2.data.datasets.register_pascal_context import PASCAL_CONTEXT_59_CLASSES

# Images of the official PASCAL Context val split (VOC2010 ImageSets/Main/val.txt).
VAL_IMAGES = 5105


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def read_label_names(path: str) -> dict[int, str]:
    """``{id: name}`` from PASCAL Context's labels.txt (lines like ``2: aeroplane``)."""
    names = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\s*(\d+)\s*[:\t ]\s*(.+?)\s*$", line)
            if m:
                names[int(m.group(1))] = m.group(2)
    if not names:
        raise ValueError(f"{path}: no 'id: name' lines; is it PASCAL Context's labels.txt?")
    return names


def context59_ids(label_names: dict[int, str]) -> list[int]:
    """The 459-class ids of the 59 classes, in the 59-class label order."""
    by_name = {}
    for i, n in label_names.items():
        by_name.setdefault(_norm(n), i)
    missing = [c for c in PASCAL_CONTEXT_59_CLASSES if _norm(c) not in by_name]
    if missing:
        raise ValueError(f"labels.txt lacks the PASCAL Context classes {missing}.")
    return [by_name[_norm(c)] for c in PASCAL_CONTEXT_59_CLASSES]


def build_luts(ids59: list[int], num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 LUTs from 459-class ids (0..num_labels) to the 59- and 60-class labels."""
    lut59 = np.full(num_labels + 1, 255, np.uint8)
    lut60 = np.zeros(num_labels + 1, np.uint8)
    for k, i in enumerate(ids59):
        lut59[i] = k
        lut60[i] = k + 1
    return lut59, lut60


def load_label_map(path: str) -> np.ndarray:
    """The ``LabelMap`` (H×W int) of one PASCAL Context .mat file."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(
            "Reading PASCAL Context's .mat files needs scipy: pip install scipy"
        ) from None
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: is trainval.tar.gz extracted into pascal_context/?"
        )
    return np.asarray(loadmat(path)["LabelMap"])


def convert_one(image_id: str, base: str, lut59: np.ndarray, lut60: np.ndarray) -> None:
    label = load_label_map(os.path.join(base, "trainval", image_id + ".mat")).astype(np.int64)
    if label.min() < 0 or label.max() >= len(lut59):
        raise ValueError(f"{image_id}.mat has labels outside 0..{len(lut59) - 1}")
    ann = os.path.join(base, "annotations_detectron2")
    write_label_png(os.path.join(ann, "pc59_val", image_id + ".png"), lut59[label])
    write_label_png(os.path.join(ann, "pc60_val", image_id + ".png"), lut60[label])
    link_or_copy(
        os.path.join(base, "VOCdevkit", "VOC2010", "JPEGImages", image_id + ".jpg"),
        os.path.join(base, "images_detectron2", "val", image_id + ".jpg"),
    )


def main(argv=None) -> int:
    """Convert the val split; returns its number of images.

    Raises:
        SplitCheckError: val.txt does not list ``--expected-images`` ids, an id has no JPEG or
            .mat, or an output folder does not end up with exactly the split's files.
    """
    parser = prepare_parser(__doc__, VAL_IMAGES)
    parser.add_argument(
        "--labels", default=None, help="labels.txt (default pascal_context/labels.txt)"
    )
    args = parser.parse_args(argv)
    base = os.path.join(args.root, "pascal_context")
    label_names = read_label_names(args.labels or os.path.join(base, "labels.txt"))
    lut59, lut60 = build_luts(context59_ids(label_names), max(label_names))
    voc = os.path.join(base, "VOCdevkit", "VOC2010")
    val_txt = os.path.join(voc, "ImageSets", "Main", "val.txt")
    ids = read_ids(val_txt)
    listing, voc_fix = f"{val_txt} lists", f"extract VOCtrainval_03-May-2010.tar again in {base}"
    check_split_size(ids, args.expected_images, listing=listing, fix=voc_fix)
    check_inputs(
        ids, os.path.join(voc, "JPEGImages"), ".jpg", what="JPEG", listing=listing, fix=voc_fix
    )
    check_inputs(
        ids,
        os.path.join(base, "trainval"),
        ".mat",
        what=".mat label map",
        listing=listing,
        fix=f"extract PASCAL Context's trainval.tar.gz again in {base}",
    )
    fn = functools.partial(convert_one, base=base, lut59=lut59, lut60=lut60)
    run_tasks(fn, ids, workers=args.workers, desc="PASCAL Context val")
    ann = os.path.join(base, "annotations_detectron2")
    check_outputs(
        ids,
        [
            (os.path.join(base, "images_detectron2", "val"), ".jpg"),
            (os.path.join(ann, "pc59_val"), ".png"),
            (os.path.join(ann, "pc60_val"), ".png"),
        ],
    )
    print(f"Wrote {len(ids)} images and masks under {base}")
    return len(ids)


if __name__ == "__main__":
    sys.exit(run_script(main))
