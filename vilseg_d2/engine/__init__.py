"""Training: the trainer, the autocast training step, the optimizer."""

from .optimizer import build_vilseg_optimizer
from .train_loop import AutocastTrainer, check_losses_finite
from .trainer import ViLSegTrainer, eval_vocabulary

__all__ = ["AutocastTrainer", "ViLSegTrainer", "build_vilseg_optimizer", "check_losses_finite", "eval_vocabulary"]
