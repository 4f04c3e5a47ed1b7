"""The online clustering head Phi_c: 1x1 conv to C clusters + softmax (paper section 3.3)."""

from __future__ import annotations

from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

__all__ = ["ViLSegClusteringHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class ViLSegClusteringHead(nn.Module):
    """Soft cluster assignments of the per-pixel embeddings.

    Unlike Detectron2's supervised heads it takes no targets: ViL-Seg trains it with the
    mutual-information loss between two views (see :func:`..losses.mutual_information_loss`).
    """

    @configurable
    def __init__(self, *, in_feature: str, in_channels: int, num_clusters: int):
        """
        Args:
            in_feature: the backbone output it reads (the embeddings, "emb").
            in_channels: D, that feature's channels.
            num_clusters: C >= 2.
        """
        super().__init__()
        if num_clusters < 2:
            raise ValueError(f"MODEL.VILSEG.NUM_CLUSTERS must be >= 2, got {num_clusters}.")
        self.in_feature = in_feature
        self.num_clusters = num_clusters
        self.predictor = nn.Conv2d(in_channels, num_clusters, kernel_size=1)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_feature = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES[0]
        if in_feature not in input_shape:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES[0]={in_feature!r} is not a backbone output; "
                f"the backbone gives {sorted(input_shape)}."
            )
        return {
            "in_feature": in_feature,
            "in_channels": input_shape[in_feature].channels,
            "num_clusters": cfg.MODEL.VILSEG.NUM_CLUSTERS,
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Cluster logits, B x C x h x w."""
        return self.predictor(features[self.in_feature])

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: backbone outputs; ``features[in_feature]`` is B x D x h x w.

        Returns:
            B x C x h x w cluster probabilities (softmax over C, computed in fp32).
        """
        return self.layers(features).float().softmax(dim=1)
