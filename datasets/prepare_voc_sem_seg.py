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

The split is checked before and after: val.txt must list 1449 ids, each with its JPEG and PNG,
and each output folder must end up with exactly those files; otherwise the script names the short
file or folder and exits with status 1.

Usage: python datasets/prepare_voc_sem_seg.py [--root $DETECTRON2_DATASETS] [--workers N]
           [--expected-images 1449]
"""

import functools
import os
import sys

from vilseg_d2.data.datasets.prepare_utils import (
    check_inputs,
    check_outputs,
    check_split_size,
    link_or_copy,
    lookup_table,
    prepare_parser,
    read_ids,
    read_label_png,
    run_script,
    run_tasks,
    write_label_png,
)

# Images of the official VOC 2012 segmentation val split (ImageSets/Segmentation/val.txt).
VAL_IMAGES = 1449

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
    """Convert the val split; returns its number of images.

    Raises:
        SplitCheckError: val.txt does not list ``--expected-images`` ids, an id has no JPEG or
            PNG, or an output folder does not end up with exactly the split's files.
    """
    args = prepare_parser(__doc__, VAL_IMAGES).parse_args(argv)
    voc = os.path.join(args.root, "VOCdevkit", "VOC2012")
    val_txt = os.path.join(voc, "ImageSets", "Segmentation", "val.txt")
    ids = read_ids(val_txt)
    fix = f"extract VOCtrainval_11-May-2012.tar again in {args.root}"
    check_split_size(ids, args.expected_images, listing=f"{val_txt} lists", fix=fix)
    for folder, ext, what in [("JPEGImages", ".jpg", "JPEG"), ("SegmentationClass", ".png", "PNG")]:
        check_inputs(
            ids, os.path.join(voc, folder), ext, what=what, listing=f"{val_txt} lists", fix=fix
        )
    run_tasks(
        functools.partial(convert_one, voc=voc), ids, workers=args.workers, desc="VOC 2012 val"
    )
    check_outputs(
        ids,
        [
            (os.path.join(voc, "images_detectron2", "val"), ".jpg"),
            (os.path.join(voc, "annotations_detectron2", "val"), ".png"),
            (os.path.join(voc, "annotations_detectron2_20", "val"), ".png"),
        ],
    )
    print(f"Wrote {len(ids)} images and masks under {voc}")
    return len(ids)


if __name__ == "__main__":
    sys.exit(run_script(main))
