"""Training: the trainer, the autocast training step, the optimizer, the checkpointer, the
predictor, and the command-line tools' vocabulary arguments."""

from . import vocabulary_args
from .checkpoint import ViLSegCheckpointer, load_eval_weights
from .optimizer import build_vilseg_optimizer
from .predictor import ViLSegPredictor
from .train_loop import (
    AutocastTrainer,
    check_losses_finite,
    compile_transformers,
    cpu_has_native,
)
from .trainer import ViLSegTrainer, eval_classes, eval_vocabulary, training_views

__all__ = [
    "AutocastTrainer",
    "ViLSegCheckpointer",
    "ViLSegPredictor",
    "ViLSegTrainer",
    "build_vilseg_optimizer",
    "check_losses_finite",
    "compile_transformers",
    "cpu_has_native",
    "eval_classes",
    "eval_vocabulary",
    "load_eval_weights",
    "training_views",
    "vocabulary_args",
]
