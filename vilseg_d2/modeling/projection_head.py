"""The projection head Phi_a of the vision-based (global/local multi-crop) contrast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

__all__ = ["ViLSegProjectionHead"]


class ViLSegProjectionHead(nn.Module):
    """Linear D -> P (paper: P = 2048); the softmax with temperature is applied by the loss.

    With ``normalize`` (default) the layer is DINO's last layer: the input is L2-normalised and
    the weight rows are weight-normalised to unit length, so the logits are cosines in [-1, 1].
    Unbounded logits let a shared-encoder teacher collapse (one prototype, growing logits that
    the lagging center never catches); measured on the tiny config, L_vision fell to ~2e-6 within
    100 iterations and the image embeddings became constant. With ``hidden_dim > 0`` a GELU MLP
    (D -> hidden) precedes the last layer, as DINO's head.
    """

    @configurable
    def __init__(self, *, in_dim: int, out_dim: int, hidden_dim: int = 0, normalize: bool = True):
        """
        Args:
            in_dim: D, the joint embedding dim.
            out_dim: P, the number of "prototype" logits.
            hidden_dim: 0 for the paper's single linear layer.
            normalize: cosine logits (L2-normalised input, unit-norm weight rows).
        """
        super().__init__()
        self.out_dim = out_dim
        self.normalize = normalize
        self.mlp = (
            nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU())
            if hidden_dim > 0
            else nn.Identity()
        )
        self.last_layer = nn.Linear(hidden_dim or in_dim, out_dim, bias=not normalize)

    @classmethod
    def from_config(cls, cfg, in_dim: int):
        v = cfg.MODEL.VILSEG
        return {
            "in_dim": in_dim,
            "out_dim": v.PROJ_DIM,
            "hidden_dim": v.PROJ_HIDDEN_DIM,
            "normalize": v.PROJ_NORMALIZE,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ... x D global embeddings.

        Returns:
            ... x P logits.
        """
        x = self.mlp(x)
        if not self.normalize:
            return self.last_layer(x)
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.last_layer.weight, dim=-1))
