#!/usr/bin/env python
"""Prepare COCO-Stuff 164k val (5000 images) for ``coco_stuff_164k_sem_seg_val`` (171 classes).

Input under $DETECTRON2_DATASETS/coco (the official archives):
    val2017/*.jpg                                   # val2017.zip
    stuffthingmaps/val2017/*.png                    # stuffthingmaps_trainval2017.zip, unzipped
                                                    # into coco/stuffthingmaps/ (value = COCO
                                                    # id - 1, 255 = unlabeled)
Output:
    stuffthingmaps_detectron2/val2017/*.png         # 0..170 contiguous, 255 = unlabeled

Usage: python datasets/prepare_coco_stuff_164k.py [--root $DETECTRON2_DATASETS] [--workers N]
"""

import argparse
import functools
import glob
import os

from vilseg_d2.data.datasets.prepare_utils import (
    lookup_table,
    read_label_png,
    run_tasks,
    write_label_png,
)
from vilseg_d2.data.datasets.register_coco_stuff import COCO_STUFF_CATEGORIES

# Stored value (COCO id - 1) -> contiguous class index; everything else (e.g. 182 = "other",
# 255 = unlabeled) -> 255.
LUT = lookup_table({coco_id - 1: k for k, (coco_id, _) in enumerate(COCO_STUFF_CATEGORIES)})


def convert_one(src: str, out_dir: str) -> None:
    write_label_png(os.path.join(out_dir, os.path.basename(src)), LUT[read_label_png(src)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    args = parser.parse_args(argv)
    coco = os.path.join(args.root, "coco")
    src_dir = os.path.join(coco, "stuffthingmaps", "val2017")
    files = sorted(glob.glob(os.path.join(src_dir, "*.png")))
    if not files:
        raise FileNotFoundError(
            f"No masks in {src_dir}: unzip stuffthingmaps_trainval2017.zip into "
            f"{coco}/stuffthingmaps/"
        )
    if not os.path.isdir(os.path.join(coco, "val2017")):
        raise FileNotFoundError(f"{coco}/val2017 not found: unzip val2017.zip into {coco}/")
    out_dir = os.path.join(coco, "stuffthingmaps_detectron2", "val2017")
    run_tasks(functools.partial(convert_one, out_dir=out_dir), files, workers=args.workers,
              desc="COCO-Stuff val2017")  # fmt: skip
    print(f"Wrote {len(files)} masks to {out_dir}")
    return len(files)


if __name__ == "__main__":
    main()
