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

from detectron2.utils.logger import setup_logger
from PIL import Image

from vilseg_d2.data.image_io import decode_image  # noqa: E402
from vilseg_d2.data.skip_tracker import BadRecordError  # noqa: E402
from vilseg_d2.engine import ViLSegPredictor, vocabulary_args  # noqa: E402
from vilseg_d2.engine.image_segmentation import (  # noqa: E402
    add_model_arguments,
    demo_config,
    describe_weights,
    segment_image,
)
from vilseg_d2.errors import MissingFileError, UserError, run_tool  # noqa: E402

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
    add_model_arguments(p)
    return p


def load_vocabulary(args) -> list:
    """The class names of --vocabulary or --vocabulary-file; a UserError saying what to fix."""
    return vocabulary_args.load_vocabulary(args)


def list_images(inputs) -> list:
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(
                f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTS)
            )
            if not found:
                raise UserError(f"No images ({', '.join(IMAGE_EXTS)}) in folder {path}.")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise MissingFileError(f"--input {path}: no such file or folder.")
    return files


def setup_cfg(args):
    """The frozen config (no test dataset); a UserError saying what to fix (no weights, a
    missing file, no CUDA, an unknown key)."""
    return demo_config(args.config_file, args.opts, random_weights=args.random_weights)


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
    describe_weights(cfg, logger)
    os.makedirs(args.output, exist_ok=True)

    shares = {}
    for path in files:
        try:
            rgb = decode_image(path)  # H x W x 3 uint8 RGB, whatever the file's mode
        except BadRecordError as e:  # unreadable / not an image: say which file, go on
            print(f"skipped {path}: cannot read it as an image ({e})", file=sys.stderr)
            continue
        result = segment_image(predictor, rgb, vocabulary)
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(result.picture(rgb)).save(os.path.join(args.output, f"{stem}.png"))
        shares[path] = result.shares()
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
    run_tool(main)
