#!/usr/bin/env python
"""Prepare PASCAL VOC 2012 val for ``voc_2012_sem_seg_val`` (21 classes) and
``voc_2012_sem_seg_val_20`` (20 classes, background ignored).

Input (the official ``VOCtrainval_11-May-2012.tar`` extracted in $DETECTRON2_DATASETS):
    VOCdevkit/VOC2012/JPEGImages/*.jpg
    VOCdevkit/VOC2012/SegmentationClass/*.png            # palette PNGs: 0..20, 255 = boundary
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt     # 1449 ids
Output:
    VOCdevkit/VOC2012/images_detectron2/val/*.jpg        # hard links (or copies)
    VOCdevkit/VOC2012/annotations_detectron2/val/*.png   # 0 = background, 1..20, 255 ignore
    VOCdevkit/VOC2012/annotations_detectron2_20/val/*.png  # 0..19, background -> 255

Usage: python datasets/prepare_voc_sem_seg.py [--root $DETECTRON2_DATASETS] [--workers N]
"""

import argparse
import functools
import os

from vilseg_d2.data.datasets.prepare_utils import (
    link_or_copy,
    lookup_table,
    read_ids,
    read_label_png,
    run_tasks,
    write_label_png,
)

# 21-class masks: identity on 0..20 (and 255); 20-class: 1..20 -> 0..19, background -> 255.
LUT_21 = lookup_table({i: i for i in range(21)})
LUT_20 = lookup_table({i: i - 1 for i in range(1, 21)})


def convert_one(image_id: str, voc: str) -> None:
    label = read_label_png(os.path.join(voc, "SegmentationClass", image_id + ".png"))
    write_label_png(
        os.path.join(voc, "annotations_detectron2", "val", image_id + ".png"), LUT_21[label]
    )
    write_label_png(
        os.path.join(voc, "annotations_detectron2_20", "val", image_id + ".png"), LUT_20[label]
    )
    link_or_copy(
        os.path.join(voc, "JPEGImages", image_id + ".jpg"),
        os.path.join(voc, "images_detectron2", "val", image_id + ".jpg"),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    args = parser.parse_args(argv)
    voc = os.path.join(args.root, "VOCdevkit", "VOC2012")
    ids = read_ids(os.path.join(voc, "ImageSets", "Segmentation", "val.txt"))
    run_tasks(
        functools.partial(convert_one, voc=voc), ids, workers=args.workers, desc="VOC 2012 val"
    )
    print(f"Wrote {len(ids)} images and masks under {voc}")
    return len(ids)


if __name__ == "__main__":
    main()
