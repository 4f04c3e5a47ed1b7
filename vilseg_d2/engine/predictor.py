"""``ViLSegPredictor``: Detectron2's DefaultPredictor with ViL-Seg's checkpoint loading."""

from __future__ import annotations

from typing import Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from .checkpoint import ViLSegCheckpointer

__all__ = ["ViLSegPredictor"]


class ViLSegPredictor(DefaultPredictor):
    """One BGR uint8 H x W x 3 image in, the model's output dict out (``sem_seg`` K x H x W
    class probabilities, ``clusters`` H x W), resized as ``INPUT.{MIN,MAX}_SIZE_TEST`` say, as
    Detectron2's :class:`DefaultPredictor`; ``MODEL.WEIGHTS`` is read by
    :class:`ViLSegCheckpointer` (``weights_only``, errors naming the file, another architecture
    refused).

    Args:
        cfg: a ViL-Seg config.
        vocabulary: the class names to segment (default: the model's, from DATASETS.TEST).
    """

    def __init__(self, cfg, vocabulary: Optional[Sequence[str]] = None):
        # DefaultPredictor.__init__ with another checkpointer.
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        ViLSegCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        if vocabulary is not None:
            self.model.set_vocabulary(vocabulary)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}.")
