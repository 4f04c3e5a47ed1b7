#!/usr/bin/env python
"""Fit the centroids of dataset-level K-means (``MODEL.VILSEG.INFERENCE_MODE "kmeans_dataset"``).

A trained model embeds ``MODEL.VILSEG.CENTROID_IMAGES`` images of its caption-training datasets
(``DATASETS.TRAIN``; drawn with ``MODEL.VILSEG.CENTROID_SEED``, at the test size; never the
evaluation images) and K-means++ fits C = ``MODEL.VILSEG.NUM_CLUSTERS`` centroids on their
unit-norm pixel embeddings. Inference then gives each pixel its nearest centroid: the clusters
are the dataset's, not adapted per image.

    tools/fit_centroids.py --config-file output/demo/train/config.yaml \\
        --output output/demo/train/centroids.pth
    tools/train_net.py --config-file output/demo/train/config.yaml --eval-only \\
        MODEL.VILSEG.INFERENCE_MODE kmeans_dataset \\
        MODEL.VILSEG.DATASET_CENTROIDS output/demo/train/centroids.pth
"""

import argparse
import os
import sys

# vilseg_d2 first: it fills the registries and quiets third-party import warnings.
# isort: off
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vilseg_d2  # noqa: E402,F401

# isort: on

from detectron2.utils.logger import setup_logger

from vilseg_d2.config import get_vilseg_cfg
from vilseg_d2.engine import ViLSegTrainer, load_eval_weights
from vilseg_d2.engine.centroids import write_dataset_centroids
from vilseg_d2.errors import run_tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True, help="the trained model's config")
    p.add_argument("--output", required=True, help="the centroids file to write (.pth)")
    p.add_argument("--iters", type=int, default=100, help="Lloyd iterations at most")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    return p.parse_args(argv)


def fit(cfg, output: str, iters: int = 100) -> dict:
    """Build the model of ``cfg`` with its weights, fit the centroids, write ``output``."""
    model = ViLSegTrainer.build_model(cfg)
    load_eval_weights(cfg, model)
    return write_dataset_centroids(cfg, model, output, weights=cfg.MODEL.WEIGHTS, iters=iters)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="vilseg_d2")
    cfg = get_vilseg_cfg(args.config_file, args.opts)
    cfg.freeze()
    return fit(cfg, args.output, args.iters)


if __name__ == "__main__":
    run_tool(main)
