"""The projection head Phi_a of the vision-based (global/local multi-crop) contrast."""

from __future__ import annotations

import torch
from detectron2.config import configurable
from torch import nn

__all__ = ["ViLSegProjectionHead"]


class ViLSegProjectionHead(nn.Module):
    """Linear D -> P (paper: P = 2048); the softmax with temperature is applied by the loss.

    With ``hidden_dim > 0`` it becomes a 2-layer MLP (D -> hidden -> P, GELU), as DINO's head.
    """

    @configurable
    def __init__(self, *, in_dim: int, out_dim: int, hidden_dim: int = 0):
        """
        Args:
            in_dim: D, the joint embedding dim.
            out_dim: P, the number of "prototype" logits.
            hidden_dim: 0 for the paper's single linear layer.
        """
        super().__init__()
        self.out_dim = out_dim
        if hidden_dim > 0:
            self.layers = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
        else:
            self.layers = nn.Linear(in_dim, out_dim)

    @classmethod
    def from_config(cls, cfg, in_dim: int):
        return {"in_dim": in_dim, "out_dim": cfg.MODEL.VILSEG.PROJ_DIM, "hidden_dim": cfg.MODEL.VILSEG.PROJ_HIDDEN_DIM}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ... x D global embeddings.

        Returns:
            ... x P logits.
        """
        return self.layers(x)
