"""One image segmented with a vocabulary, as ``tools/demo.py`` and the web demo
(:mod:`vilseg_d2.app`) both do it: the predictor's config and weights, the class and cluster
maps, the picture (input | classes | clusters) and each class's share of the pixels.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
from detectron2.data import Metadata

from ..config import get_vilseg_cfg
from ..errors import UserError
from ..visualization import class_colors, segmentation_panels
from .predictor import ViLSegPredictor

__all__ = [
    "ImageSegmentation",
    "add_model_arguments",
    "demo_config",
    "describe_weights",
    "segment_image",
]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """A demo's ``--random-weights`` and ``--opts KEY VALUE ...`` (last: it takes the rest of the
    command line), read by :func:`demo_config`."""
    parser.add_argument("--random-weights", action="store_true",
                        help="segment with untrained weights when neither MODEL.WEIGHTS nor "
                             "MODEL.OPEN_CLIP.PRETRAINED is set")  # fmt: skip
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ..."
    )


def demo_config(config_file: str, opts: Sequence[str] = (), *, random_weights: bool = False):
    """The frozen config of a demo's predictor: ``config_file`` with ``opts``, no test dataset
    (the vocabulary comes from the user).

    Args:
        config_file: a yaml config, e.g. ``output/demo/train/config.yaml``.
        opts: overrides, ``[KEY, VALUE, ...]``.
        random_weights: allow a model with neither ``MODEL.WEIGHTS`` nor
            ``MODEL.OPEN_CLIP.PRETRAINED`` (an untrained one).

    Raises:
        UserError: no weights (unless ``random_weights``); and the config's own errors (a
            missing file, an unknown key, CUDA asked for on a machine without it).
    """
    cfg = get_vilseg_cfg(config_file, opts)
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    if not (cfg.MODEL.WEIGHTS or cfg.MODEL.OPEN_CLIP.PRETRAINED or random_weights):
        raise UserError(
            "No trained weights: pass --opts MODEL.WEIGHTS /path/to/model_final.pth (after "
            "`make demo`: output/demo/train/model_final.pth with --config-file "
            "output/demo/train/config.yaml), or pretrained towers with "
            "MODEL.OPEN_CLIP.PRETRAINED. --random-weights segments with an untrained model."
        )
    return cfg


def describe_weights(cfg, logger: logging.Logger) -> None:
    """Log which weights a demo segments with (a warning for an untrained model)."""
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


@dataclass(frozen=True)
class ImageSegmentation:
    """An image's segmentation.

    Attributes:
        vocabulary: the K class names segmented with.
        labels: H x W int64 class ids (indices into ``vocabulary``), at the image's size.
        clusters: H x W int64 cluster ids (``dense``: the class ids).
        seconds: how long the model took (the predictor's call and the class argmax).
    """

    vocabulary: List[str]
    labels: np.ndarray
    clusters: np.ndarray
    seconds: float

    def metadata(self) -> Metadata:
        """Detectron2 metadata of this vocabulary (``stuff_classes``, ``stuff_colors``): the
        colours the picture draws class k in. A fresh object, not the catalog's."""
        return Metadata(
            name="__vilseg_demo",
            stuff_classes=list(self.vocabulary),
            stuff_colors=class_colors(len(self.vocabulary)),
        )

    def shares(self) -> Dict[str, float]:
        """Each class's share of the pixels (0-1, 6 decimals), in vocabulary order; classes
        without a pixel are left out."""
        counts = np.bincount(self.labels.reshape(-1), minlength=len(self.vocabulary))
        fractions = counts / self.labels.size
        return {c: round(float(s), 6) for c, s in zip(self.vocabulary, fractions) if s > 0}

    def picture(self, rgb: np.ndarray) -> np.ndarray:
        """Input | classes (Detectron2's Visualizer, names on the segments) | cluster map, as
        :func:`~vilseg_d2.visualization.segmentation_panels` draws them (small images enlarged
        so that the names fit).

        Args:
            rgb: the H x W x 3 uint8 image segmented.

        Returns:
            (f*H) x (3*f*W) x 3 uint8.
        """
        return segmentation_panels(rgb, self.labels, self.clusters, self.metadata())


def segment_image(
    predictor: ViLSegPredictor, rgb: np.ndarray, vocabulary: Sequence[str]
) -> ImageSegmentation:
    """Segment one image with a vocabulary.

    Args:
        predictor: the model; its default vocabulary is set to ``vocabulary``.
        rgb: H x W x 3 uint8 RGB image (the predictor is handed it as BGR, as Detectron2's
            predictors take images).
        vocabulary: K class names (with "background" where the background rules are on, see
            :func:`~vilseg_d2.engine.vocabulary_args.add_background_class`).

    Returns:
        The class and cluster maps at the image's size.
    """
    vocabulary = list(vocabulary)
    predictor.model.set_vocabulary(vocabulary)
    start = time.perf_counter()
    out = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))
    labels = out["sem_seg"].argmax(0).cpu().numpy()
    seconds = time.perf_counter() - start
    return ImageSegmentation(vocabulary, labels, out["clusters"].cpu().numpy(), seconds)
