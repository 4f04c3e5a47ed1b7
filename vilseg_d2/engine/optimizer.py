"""AdamW with ViL-Seg's parameter groups."""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["build_vilseg_optimizer", "param_groups"]

# Besides every 1-D / 0-D parameter (norm gains, biases, the CLS embedding, the logit scale):
NO_WEIGHT_DECAY_KEYS = ("positional_embedding",)


def param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Two groups, as CLIP and DINO train: decay on weight matrices and conv kernels; none on
    norms, biases, positional / class embeddings and the logit scale. Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(key in name for key in NO_WEIGHT_DECAY_KEYS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_vilseg_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` ADAMW (default) or SGD over :func:`param_groups`, with optional
    gradient clipping (``SOLVER.CLIP_GRADIENTS``)."""
    groups = param_groups(model, cfg.SOLVER.WEIGHT_DECAY)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        cls = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        return cls(groups, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS), eps=cfg.SOLVER.EPS)
    if name == "SGD":
        cls = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return cls(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
    raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}.")
