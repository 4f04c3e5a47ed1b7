"""Evaluation on top of Detectron2's SemSegEvaluator."""

from .sem_seg_evaluation import ViLSegSemSegEvaluator

__all__ = ["ViLSegSemSegEvaluator"]
