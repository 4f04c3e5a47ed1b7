"""Evaluation on top of Detectron2's SemSegEvaluator."""
