#!/usr/bin/env python
"""Prepare COCO-Stuff 164k val (5000 images) for ``coco_stuff_164k_sem_seg_val`` (171 classes).

Input under $DETECTRON2_DATASETS/coco (the official archives):
    val2017/*.jpg                                   # val2017.zip
    stuffthingmaps/val2017/*.png                    # stuffthingmaps_trainval2017.zip, unzipped
                                                    # into coco/stuffthingmaps/ (value = COCO
                                                    # id - 1, 255 = unlabeled)
Output:
    stuffthingmaps_detectron2/val2017/*.png         # 0..170 contiguous, 255 = unlabeled

The split is checked before and after: stuffthingmaps/val2017 must hold 5000 masks, each with
its JPEG in val2017, and the output folder must end up with exactly those masks; otherwise the
script names the short folder and exits with status 1.

Usage: python datasets/prepare_coco_stuff_164k.py [--root $DETECTRON2_DATASETS] [--workers N]
           [--expected-images 5000]
"""

import functools
import glob
import os
import sys

from vilseg_d2.data.datasets.prepare_utils import (
    check_inputs,
    check_outputs,
    check_split_size,
    lookup_table,
    prepare_parser,
    read_label_png,
    run_script,
    run_tasks,
    write_label_png,
)
from vilseg_d2.data.datasets.register_coco_stuff import COCO_STUFF_CATEGORIES

# Images of COCO val2017, the val split of COCO-Stuff 164k.
VAL_IMAGES = 5000

# Stored value (COCO id - 1) -> contiguous class index; everything else (e.g. 182 = "other",
# 255 = unlabeled) -> 255.
LUT = lookup_table({coco_id - 1: k for k, (coco_id, _) in enumerate(COCO_STUFF_CATEGORIES)})


def convert_one(src: str, out_dir: str) -> None:
    write_label_png(os.path.join(out_dir, os.path.basename(src)), LUT[read_label_png(src)])


def main(argv=None) -> int:
    """Convert the val masks; returns their number.

    Raises:
        SplitCheckError: stuffthingmaps/val2017 does not hold ``--expected-images`` masks, a mask
            has no JPEG in val2017, or the output folder does not end up with exactly the masks.
    """
    args = prepare_parser(__doc__, VAL_IMAGES).parse_args(argv)
    coco = os.path.join(args.root, "coco")
    src_dir = os.path.join(coco, "stuffthingmaps", "val2017")
    files = sorted(glob.glob(os.path.join(src_dir, "*.png")))
    if not files:
        raise FileNotFoundError(
            f"No masks in {src_dir}: unzip stuffthingmaps_trainval2017.zip into "
            f"{coco}/stuffthingmaps/"
        )
    image_dir = os.path.join(coco, "val2017")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{image_dir} not found: unzip val2017.zip into {coco}/")
    ids = [os.path.splitext(os.path.basename(f))[0] for f in files]
    listing = f"{src_dir} holds the masks of"
    check_split_size(
        ids,
        args.expected_images,
        listing=listing,
        fix=f"unzip stuffthingmaps_trainval2017.zip again into {coco}/stuffthingmaps/",
    )
    check_inputs(
        ids,
        image_dir,
        ".jpg",
        what="JPEG",
        listing=listing,
        fix=f"unzip val2017.zip again into {coco}/",
    )
    out_dir = os.path.join(coco, "stuffthingmaps_detectron2", "val2017")
    run_tasks(functools.partial(convert_one, out_dir=out_dir), files, workers=args.workers,
              desc="COCO-Stuff val2017")  # fmt: skip
    check_outputs(ids, [(out_dir, ".png")])
    print(f"Wrote {len(files)} masks to {out_dir}")
    return len(files)


if __name__ == "__main__":
    sys.exit(run_script(main))
