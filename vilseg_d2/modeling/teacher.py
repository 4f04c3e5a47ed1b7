"""``MomentumTeacher``: DINO's momentum teacher for L_vision (``MODEL.VILSEG.TEACHER "ema"``)."""

from __future__ import annotations

import copy
import math
from typing import Callable, Dict, Optional

import torch
from torch import nn

__all__ = ["MomentumTeacher"]


class MomentumTeacher(nn.Module):
    """Exponential moving averages of the image encoder and of Phi_a, which give L_vision's
    teacher logits of the global view (the paper's eq. 2 uses the network itself).

    The momentum follows DINO's cosine schedule from ``base_momentum`` to 1 over the iterations
    in which L_vision trains, ``[start_iter, max_iter)``; before ``start_iter`` the teacher
    copies the student at every update, so that it starts from the network L_vision meets. Its
    parameters get no gradient; they are in the model's state dict, so a checkpoint keeps them.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projection_head: nn.Module,
        *,
        base_momentum: float,
        start_iter: int,
        max_iter: int,
    ):
        """
        Args:
            backbone, projection_head: the student's; copied here.
            base_momentum: the momentum when L_vision starts (DINO: 0.996).
            start_iter: the iteration at which L_vision starts.
            max_iter: the training length; the momentum reaches 1 there.
        """
        super().__init__()
        if not 0 <= base_momentum <= 1:
            raise ValueError(
                f"MODEL.VILSEG.TEACHER_MOMENTUM must be in [0, 1], got {base_momentum}."
            )
        self.backbone = copy.deepcopy(backbone)
        self.projection_head = copy.deepcopy(projection_head)
        for p in self.parameters():
            p.requires_grad_(False)
        self.base_momentum = base_momentum
        self.start_iter = start_iter
        self.max_iter = max(max_iter, start_iter + 1)

    @classmethod
    def from_config(
        cls, cfg, backbone: nn.Module, projection_head: nn.Module
    ) -> Optional["MomentumTeacher"]:
        """The teacher ``MODEL.VILSEG.TEACHER`` asks for: None for "self" (or without L_vision)."""
        v = cfg.MODEL.VILSEG
        if v.TEACHER not in ("self", "ema"):
            raise ValueError(f"MODEL.VILSEG.TEACHER must be 'self' or 'ema', got {v.TEACHER!r}.")
        if v.TEACHER == "self" or v.VISION_WEIGHT == 0:
            return None
        return cls(
            backbone,
            projection_head,
            base_momentum=v.TEACHER_MOMENTUM,
            start_iter=int(v.AUX_WARMUP_ITERS[0]),
            max_iter=cfg.SOLVER.MAX_ITER,
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor, pool: Callable[[Dict], torch.Tensor]) -> torch.Tensor:
        """The teacher logits of the global views.

        Args:
            images: B x 3 x S x S normalised global views.
            pool: the backbone's token dict -> B x D global embeddings (the model's e_v).

        Returns:
            B x P logits of Phi_a, without gradient.
        """
        return self.projection_head(pool(self.backbone.forward_tokens(images)))

    def momentum(self, iteration: int) -> float:
        """The EMA momentum of the update after training step ``iteration`` (0 = copy)."""
        if iteration < self.start_iter:
            return 0.0
        progress = min((iteration - self.start_iter) / (self.max_iter - self.start_iter), 1.0)
        return 1 - (1 - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def update(self, backbone: nn.Module, projection_head: nn.Module, iteration: int) -> None:
        """teacher <- m * teacher + (1 - m) * student, m = :meth:`momentum` (``iteration``)."""
        m = self.momentum(iteration)
        for mine, theirs in ((self.backbone, backbone), (self.projection_head, projection_head)):
            for t, s in zip(mine.parameters(), theirs.parameters()):
                t.mul_(m).add_(s.detach(), alpha=1 - m)

    @staticmethod
    def fill_missing(state_dict: Dict[str, torch.Tensor], prefix: str) -> None:
        """Give a model state dict without a teacher (another ``TEACHER``, or weights to start
        from) one that is its network, as DINO's teacher starts as the student.

        Args:
            state_dict: the owning model's state dict, edited in place.
            prefix: the owning model's prefix; the teacher is its ``teacher`` submodule.
        """
        if any(k.startswith(prefix + "teacher.") for k in state_dict):
            return
        parts = (prefix + "backbone.", prefix + "projection_head.")
        for key in [k for k in state_dict if k.startswith(parts)]:
            state_dict[prefix + "teacher." + key[len(prefix) :]] = state_dict[key]
