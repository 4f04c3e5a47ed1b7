#!/usr/bin/env python
"""Segment your own images with any vocabulary.

    tools/demo.py --config-file configs/vilseg_tiny.yaml --input img.jpg more/ \\
        --vocabulary "cat; dog; sky, clouds" --output out/ --opts MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu

(``MODEL.DEVICE cpu`` runs it on the CPU; without it the config's CUDA is required.)

For each image it writes ``<name>_overlay.png`` (classes drawn by Detectron2's Visualizer),
``<name>_clusters.png`` (the cluster map), and one ``shares.json`` with each image's per-class
pixel shares. Classes are separated by ';' (or one per line in --vocabulary-file); commas
within a class list synonyms.

Images of any mode are read as RGB (grayscale and palette converted, alpha composited over
white, 16-bit scaled to 8 bits, EXIF rotation applied); an unreadable file is skipped with a
message; any size works (small images are resized to INPUT.MIN_SIZE_TEST, large ones can be
segmented window by window with MODEL.VILSEG.SLIDING_WINDOW_SIZE).
"""

import argparse
import glob
import json
import os
import sys

import numpy as np
from detectron2.data import Metadata
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vilseg_d2  # noqa: E402,F401
from vilseg_d2.config import get_vilseg_cfg  # noqa: E402
from vilseg_d2.data.image_io import decode_image  # noqa: E402
from vilseg_d2.data.skip_tracker import BadRecordError  # noqa: E402
from vilseg_d2.engine import ViLSegPredictor  # noqa: E402
from vilseg_d2.modeling import duplicate_classes, parse_vocabulary  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def get_parser():
    p = argparse.ArgumentParser(description="ViL-Seg demo: open-vocabulary segmentation of your images.")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    vocab = p.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocabulary", help='e.g. "cat; dog; sky, clouds"')
    vocab.add_argument("--vocabulary-file", help="UTF-8 text file, one class per line")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    return p


def load_vocabulary(args) -> list:
    """The class names of --vocabulary or --vocabulary-file; SystemExit saying what to fix."""
    if args.vocabulary is not None:
        text = args.vocabulary
    else:
        try:
            with open(args.vocabulary_file, encoding="utf-8-sig") as f:  # a BOM is dropped
                text = f.read()
        except UnicodeDecodeError as e:
            raise SystemExit(f"--vocabulary-file {args.vocabulary_file} is not UTF-8 text ({e}); save it as UTF-8.")
        except OSError as e:
            raise SystemExit(f"Cannot read --vocabulary-file: {e}")
    classes = parse_vocabulary(text)
    if not classes:
        raise SystemExit("The vocabulary is empty: give at least one class name, e.g. --vocabulary 'cat; dog'.")
    duplicates = duplicate_classes(classes)
    if duplicates:
        raise SystemExit(
            f"The vocabulary names these classes more than once: {duplicates}. Give each class once; "
            f"synonyms of one class go in one name, separated by commas ('cat, kitten')."
        )
    return classes


def list_images(inputs) -> list:
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTS))
            if not found:
                raise SystemExit(f"No images ({', '.join(IMAGE_EXTS)}) in folder {path}.")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SystemExit(f"--input {path}: no such file or folder.")
    return files


def setup_cfg(args):
    cfg = get_vilseg_cfg(args.config_file, args.opts)
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    return cfg


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="vilseg_demo")
    vocabulary = load_vocabulary(args)
    files = list_images(args.input)
    cfg = setup_cfg(args)
    predictor = ViLSegPredictor(cfg, vocabulary)
    # Metadata of this call only (the catalog's entries cannot change: main() may run again).
    meta = Metadata(name="__vilseg_demo", stuff_classes=list(vocabulary))
    num_ids = max(predictor.model.num_clusters, len(vocabulary))  # cluster ids ("dense": class ids)
    cluster_meta = Metadata(name="__vilseg_demo_clusters", stuff_classes=[f"cluster {i}" for i in range(num_ids)])
    os.makedirs(args.output, exist_ok=True)

    shares = {}
    for path in files:
        try:
            rgb = decode_image(path)  # H x W x 3 uint8 RGB, whatever the file's mode
        except BadRecordError as e:  # unreadable / not an image: say which file, go on
            print(f"skipped {path}: cannot read it as an image ({e})", file=sys.stderr)
            continue
        out = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))  # the predictor takes BGR
        labels = out["sem_seg"].argmax(0).cpu().numpy()
        clusters = out["clusters"].cpu().numpy()
        stem = os.path.splitext(os.path.basename(path))[0]
        vis = Visualizer(rgb, meta, instance_mode=ColorMode.SEGMENTATION).draw_sem_seg(labels, alpha=0.5)
        vis.save(os.path.join(args.output, f"{stem}_overlay.png"))
        Visualizer(rgb, cluster_meta).draw_sem_seg(clusters, alpha=0.6).save(os.path.join(args.output, f"{stem}_clusters.png"))
        counts = np.bincount(labels.reshape(-1), minlength=len(vocabulary)) / labels.size
        shares[path] = {c: round(float(s), 6) for c, s in zip(vocabulary, counts) if s > 0}
        print(f"{path}: " + ", ".join(f"{c} {100 * s:.1f}%" for c, s in sorted(shares[path].items(), key=lambda x: -x[1])))
    with open(os.path.join(args.output, "shares.json"), "w") as f:
        json.dump(shares, f, indent=2)
    return shares


if __name__ == "__main__":
    main()
