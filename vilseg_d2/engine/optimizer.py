"""AdamW with ViL-Seg's parameter groups."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["build_vilseg_optimizer", "param_groups"]

# Besides every 1-D / 0-D parameter (norm gains, biases, the CLS embedding, the logit scale):
NO_WEIGHT_DECAY_KEYS = ("positional_embedding",)


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    *,
    base_lr: Optional[float] = None,
    cluster_head_lr_multiplier: float = 1.0,
    projection_head_lr_multiplier: float = 1.0,
) -> List[Dict[str, Any]]:
    """Decay on weight matrices and conv kernels; none on norms, biases, positional / class
    embeddings and the logit scale, as CLIP and DINO train. Frozen parameters are left out.

    Args:
        model: the model; its ``clustering_head`` and ``projection_head`` (if any) may learn at
            rates of their own.
        weight_decay: of the decayed group.
        base_lr: the optimizer's learning rate (needed when a multiplier is not 1).
        cluster_head_lr_multiplier, projection_head_lr_multiplier: the clustering head's (Phi_c)
            and the projection head's (Phi_a) parameters get ``base_lr`` x this, in groups of
            their own (Detectron2's schedulers scale every group's initial rate alike).

    Returns:
        optimizer parameter groups: decayed, not decayed, then per head with a multiplier its
        decayed and not decayed ones.
    """
    multipliers = {
        "clustering_head": cluster_head_lr_multiplier,
        "projection_head": projection_head_lr_multiplier,
    }
    heads = {
        name: m
        for name, m in multipliers.items()
        if m != 1.0 and getattr(model, name, None) is not None
    }
    if heads and base_lr is None:
        raise ValueError("param_groups needs base_lr to apply a head's learning-rate multiplier.")
    owner = {id(p): name for name in heads for p in getattr(model, name).parameters()}
    groups = {
        None: [{"params": [], "weight_decay": weight_decay}, {"params": [], "weight_decay": 0.0}]
    }
    for name, m in heads.items():
        groups[name] = [dict(group, params=[], lr=base_lr * m) for group in groups[None]]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or any(key in name for key in NO_WEIGHT_DECAY_KEYS)
        groups[owner.get(id(p))][int(no_decay)]["params"].append(p)
    return groups.pop(None) + [
        group for pair in groups.values() for group in pair if group["params"]
    ]


def _fusable(groups: List[Dict[str, Any]]) -> bool:
    """Whether PyTorch has a fused AdamW for every parameter of ``groups`` (floating point, on
    the CPU or CUDA): one kernel per step instead of several passes over the parameters (the
    tiny config's step: 5 ms against 16 ms on the CPU)."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


def build_vilseg_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` ADAMW (default) or SGD over :func:`param_groups`, with optional
    gradient clipping (``SOLVER.CLIP_GRADIENTS``)."""
    groups = param_groups(
        model,
        cfg.SOLVER.WEIGHT_DECAY,
        base_lr=cfg.SOLVER.BASE_LR,
        cluster_head_lr_multiplier=cfg.SOLVER.CLUSTER_HEAD_LR_MULTIPLIER,
        projection_head_lr_multiplier=cfg.SOLVER.PROJECTION_HEAD_LR_MULTIPLIER,
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        cls = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        fused = {"fused": True} if cfg.SOLVER.FUSED_OPTIMIZER and _fusable(groups) else {}
        return cls(
            groups,
            lr=cfg.SOLVER.BASE_LR,
            betas=tuple(cfg.SOLVER.BETAS),
            eps=cfg.SOLVER.EPS,
            **fused,
        )
    if name == "SGD":
        cls = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return cls(
            groups,
            lr=cfg.SOLVER.BASE_LR,
            momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
        )
    raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}.")
