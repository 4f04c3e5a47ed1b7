#!/usr/bin/env python
"""Export a trained ViL-Seg with your vocabulary, for a server without PyTorch.

    tools/export_model.py --config-file output/demo/train/config.yaml \\
        --vocabulary "background; circle; square; star" --output exported/ \\
        MODEL.WEIGHTS output/demo/train/model_final.pth

The image branch of the config's inference (``online`` or ``dense``: backbone, clustering head,
region pooling, the similarity with the vocabulary's class embeddings, the background rules and
the mask refinement when the config has them) becomes one graph of the image, any height and
width. The vocabulary is baked in: its prompt templates and synonyms ("sky, clouds") averaged as
at inference. ``--output`` gets ``model.onnx`` (``--format torchscript``: ``model.ts``),
``classes.json`` (the classes in output order, their colours, the settings baked in) and
``export.json`` (config, weights, opset, date, and what the runtime does before the graph).
Run it with ``tools/deploy/segment_onnx.py``, which needs only onnxruntime, numpy and OpenCV.

As in ``tools/demo.py``, with the background rules on, a vocabulary without "background" gets
it. Per-image K-means (``MODEL.VILSEG.INFERENCE_MODE kmeans``) and sliding windows are not
exported: add ``MODEL.VILSEG.INFERENCE_MODE online`` or ``MODEL.VILSEG.SLIDING_WINDOW_SIZE 0``.
The export runs on the CPU.
"""

import argparse
import logging
import os
import sys

# vilseg_d2 first: it fills the registries and quiets third-party import warnings.
# isort: off
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vilseg_d2  # noqa: E402,F401

# isort: on

import yaml
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from vilseg_d2.config import get_vilseg_cfg
from vilseg_d2.engine import ViLSegCheckpointer, vocabulary_args
from vilseg_d2.errors import run_tool
from vilseg_d2.export.bundle import DEFAULT_OPSET, EXPORT_FORMATS, export_model
from vilseg_d2.export.exportable import check_exportable
from vilseg_d2.modeling.segmenter import ViLSegSegmenter

logger = logging.getLogger("vilseg_export")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Export ViL-Seg with a vocabulary to ONNX / TorchScript for deployment."
    )
    p.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    vocabulary_args.add_vocabulary_arguments(p)
    p.add_argument("--output", required=True, help="output folder of the exported model")
    p.add_argument(
        "--format",
        nargs="+",
        default=["onnx"],
        metavar="{" + ",".join(EXPORT_FORMATS) + "}",
        help="output formats, one or both (default: onnx)",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    p.add_argument("--random-weights", action="store_true",
                   help="export untrained weights when neither MODEL.WEIGHTS nor "
                        "MODEL.OPEN_CLIP.PRETRAINED is set (for trying the pipeline)")  # fmt: skip
    p.add_argument(
        "opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides, KEY VALUE ... (e.g. MODEL.WEIGHTS model_final.pth)",
    )
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; the config overrides may follow ``--format``'s values directly
    (``--format onnx torchscript MODEL.WEIGHTS w.pth``)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    formats = list(args.format)
    count = next((i for i, f in enumerate(formats) if f not in EXPORT_FORMATS), len(formats))
    if count == 0:
        parser.error(f"argument --format: invalid choice: {formats[0]!r} (choose from "
                     f"{', '.join(EXPORT_FORMATS)})")  # fmt: skip
    args.format, args.opts = formats[:count], formats[count:] + list(args.opts)
    return args


def setup_cfg(args):
    """The config on the CPU, without a test dataset; SystemExit saying what to fix."""
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"--config-file {args.config_file}: no such file.")
    try:
        cfg = get_vilseg_cfg(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    except (KeyError, ValueError, OSError, RuntimeError, yaml.YAMLError) as e:
        raise SystemExit(f"--config-file {args.config_file}: {e.args[0] if e.args else e}")
    cfg.MODEL.DEVICE = "cpu"  # traced on the CPU; the graph runs anywhere
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    weights = cfg.MODEL.WEIGHTS
    if weights and not os.path.isfile(weights):
        raise SystemExit(f"MODEL.WEIGHTS {weights}: no such file.")
    if not (weights or cfg.MODEL.OPEN_CLIP.PRETRAINED or args.random_weights):
        raise SystemExit(
            "No trained weights: append MODEL.WEIGHTS /path/to/model_final.pth (after "
            "`make demo`: output/demo/train/model_final.pth with --config-file "
            "output/demo/train/config.yaml), or pretrained towers with "
            "MODEL.OPEN_CLIP.PRETRAINED. --random-weights exports an untrained model."
        )
    try:
        check_exportable(ViLSegSegmenter(cfg))
    except ValueError as e:
        raise SystemExit(str(e))
    return cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logger(name="vilseg_export")
    setup_logger(name="vilseg_d2")
    vocabulary = vocabulary_args.load_vocabulary(args)
    cfg = setup_cfg(args)
    vocabulary = vocabulary_args.add_background_class(vocabulary, cfg, logger)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        ViLSegCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    record = export_model(
        model,
        cfg,
        vocabulary,
        args.output,
        formats=args.format,
        opset=args.opset,
        config_file=os.path.abspath(args.config_file),
    )
    mode = cfg.MODEL.VILSEG.INFERENCE_MODE
    refine = cfg.MODEL.VILSEG.REFINE_ITERS
    logger.info(
        f"Exported {mode} inference{f', refined ({refine} steps)' if refine else ''} with "
        f"{len(vocabulary)} classes to {args.output}: "
        + ", ".join(f["file"] for f in record["formats"].values())
        + ", classes.json, export.json. Run it with: tools/deploy/segment_onnx.py --model "
        f"{args.output} --input IMAGES --output OUT"
    )
    return record


if __name__ == "__main__":
    run_tool(main)
