#!/usr/bin/env python
"""Segment your own images with any vocabulary.

    tools/demo.py --config-file configs/vilseg_tiny.yaml --input img.jpg more/ \\
        --vocabulary "cat; dog; sky, clouds" --output out/ \\
        --opts MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu

(``MODEL.DEVICE cpu`` runs it on the CPU; without it the config's CUDA is required.)

For each image it writes ``<name>.png`` (input | classes drawn by Detectron2's Visualizer |
cluster map; small images enlarged so that the names fit), and one ``shares.json`` with each
image's per-class pixel shares. Classes are separated by ';' (or one per line in
--vocabulary-file); commas within a class list synonyms.

Weights: ``MODEL.WEIGHTS`` (a checkpoint of this project, e.g.
``output/demo/train/model_final.pth``) or pretrained open_clip towers
(``MODEL.OPEN_CLIP.PRETRAINED``); without either it stops, unless ``--random-weights`` asks for
an untrained model. With the background rules on
(``MODEL.VILSEG.BG_THRESHOLD`` / ``BG_GLOBAL_SIMILARITY``, as the demo's config.yaml has them), a
vocabulary without a "background" class gets one, and it says so.

Images of any mode are read as RGB (grayscale and palette converted, alpha composited over
white, 16-bit scaled to 8 bits, EXIF rotation applied); an unreadable file is skipped with a
message; any size works (small images are resized to INPUT.MIN_SIZE_TEST, large ones can be
segmented window by window with MODEL.VILSEG.SLIDING_WINDOW_SIZE).
"""

import argparse
import glob
import json
import logging
import os
import sys

# vilseg_d2 first: it fills the registries and quiets third-party import warnings.
# isort: off
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vilseg_d2  # noqa: E402,F401

# isort: on

import numpy as np
from detectron2.data import Metadata
from detectron2.utils.logger import setup_logger
from PIL import Image

from vilseg_d2.config import get_vilseg_cfg  # noqa: E402
from vilseg_d2.data.image_io import decode_image  # noqa: E402
from vilseg_d2.data.skip_tracker import BadRecordError  # noqa: E402
from vilseg_d2.engine import ViLSegPredictor, vocabulary_args  # noqa: E402
from vilseg_d2.visualization import class_colors, segmentation_panels  # noqa: E402

logger = logging.getLogger("vilseg_demo")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def get_parser():
    p = argparse.ArgumentParser(
        description="ViL-Seg demo: open-vocabulary segmentation of your images."
    )
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    vocabulary_args.add_vocabulary_arguments(p)
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--random-weights", action="store_true",
                   help="segment with untrained weights when neither MODEL.WEIGHTS nor "
                        "MODEL.OPEN_CLIP.PRETRAINED is set")  # fmt: skip
    p.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ..."
    )
    return p


def load_vocabulary(args) -> list:
    """The class names of --vocabulary or --vocabulary-file; SystemExit saying what to fix."""
    return vocabulary_args.load_vocabulary(args)


def list_images(inputs) -> list:
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(
                f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTS)
            )
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
    if not (cfg.MODEL.WEIGHTS or cfg.MODEL.OPEN_CLIP.PRETRAINED or args.random_weights):
        raise SystemExit(
            "No trained weights: pass --opts MODEL.WEIGHTS /path/to/model_final.pth (after "
            "`make demo`: output/demo/train/model_final.pth with --config-file "
            "output/demo/train/config.yaml), or pretrained towers with "
            "MODEL.OPEN_CLIP.PRETRAINED. --random-weights segments with an untrained model."
        )
    return cfg


def with_background(vocabulary: list, cfg) -> list:
    """The vocabulary, with a "background" class first when the background rules are on and
    it names none (the rules assign that class; they never take over a named one)."""
    return vocabulary_args.add_background_class(vocabulary, cfg, logger)


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="vilseg_demo")
    setup_logger(name="vilseg_d2")
    vocabulary = load_vocabulary(args)
    files = list_images(args.input)
    cfg = setup_cfg(args)
    vocabulary = with_background(vocabulary, cfg)
    predictor = ViLSegPredictor(cfg, vocabulary)
    if cfg.MODEL.WEIGHTS:
        logger.info(f"Weights: {cfg.MODEL.WEIGHTS}")
    elif cfg.MODEL.OPEN_CLIP.PRETRAINED:
        logger.info(
            f"Weights: open_clip {cfg.MODEL.OPEN_CLIP.MODEL_NAME} / "
            f"{cfg.MODEL.OPEN_CLIP.PRETRAINED}"
        )
    else:
        logger.warning(
            "Weights: none, an untrained model (--random-weights): the segments mean nothing."
        )
    # Metadata of this call only (the catalog's entries cannot change: main() may run again).
    meta = Metadata(
        name="__vilseg_demo",
        stuff_classes=list(vocabulary),
        stuff_colors=class_colors(len(vocabulary)),
    )
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
        Image.fromarray(segmentation_panels(rgb, labels, clusters, meta)).save(
            os.path.join(args.output, f"{stem}.png")
        )
        counts = np.bincount(labels.reshape(-1), minlength=len(vocabulary)) / labels.size
        shares[path] = {c: round(float(s), 6) for c, s in zip(vocabulary, counts) if s > 0}
        print(
            f"{path}: "
            + ", ".join(
                f"{c} {100 * s:.1f}%" for c, s in sorted(shares[path].items(), key=lambda x: -x[1])
            )
        )
    with open(os.path.join(args.output, "shares.json"), "w") as f:
        json.dump(shares, f, indent=2)
    return shares


if __name__ == "__main__":
    main()
