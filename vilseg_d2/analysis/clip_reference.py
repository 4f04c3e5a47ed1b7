"""open_clip's own CLIP training step (image and text towers + ``ClipLoss``), the reference that
ViL-Seg's training cost is compared with."""

from __future__ import annotations

from typing import Dict, List, Sequence

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch import nn

from ..modeling.open_clip_model import create_open_clip_model
from .samples import random_image

__all__ = ["ClipTrainingModel", "clip_samples"]


class ClipTrainingModel(nn.Module):
    """open_clip's CLIP (``open_clip.create_model(MODEL.OPEN_CLIP.MODEL_NAME)``, random init) with
    its contrastive loss, taking Detectron2-style lists of dicts, so that the project's trainer
    (``AutocastTrainer``) and fvcore can run it as they run ViL-Seg.

    Input: dicts with ``image`` (3 x S x S uint8, S = :attr:`image_size`, the tower's own input
    size) and ``caption`` (str). Output: ``{"loss_clip"}``, the symmetric InfoNCE of the batch.
    """

    def __init__(self, *, model_name: str, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        """
        Args:
            model_name: an open_clip model name (or one of vilseg_d2/model_configs).
            pixel_mean, pixel_std: per-channel normalisation of 0-255 pixels (the config's).
        """
        super().__init__()
        self.clip = create_open_clip_model(model_name)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.loss = ClipLoss()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> "ClipTrainingModel":
        """The CLIP of ``MODEL.OPEN_CLIP.MODEL_NAME`` with the config's pixel normalisation, on
        ``MODEL.DEVICE``."""
        model = cls(
            model_name=cfg.MODEL.OPEN_CLIP.MODEL_NAME,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        )
        return model.to(cfg.MODEL.DEVICE)

    @property
    def image_size(self) -> int:
        """The image tower's input side (224 for ViT-B-16)."""
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def forward(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """
        Args:
            batched_inputs: B dicts with ``image`` (3 x S x S) and ``caption``.

        Returns:
            ``{"loss_clip": scalar}``.
        """
        device = self.pixel_mean.device
        images = torch.stack(
            [x["image"].to(device) for x in batched_inputs]
        ).float()  # B x 3 x S x S
        images = (images - self.pixel_mean) / self.pixel_std
        tokens = self.tokenizer([x["caption"] for x in batched_inputs]).to(device)  # B x context
        image_features, text_features, logit_scale = self.clip(images, tokens)[
            :3
        ]  # B x D, B x D, scalar
        return {"loss_clip": self.loss(image_features, text_features, logit_scale)}


def clip_samples(batch: int, image_size: int, seed: int = 0) -> List[Dict]:
    """``batch`` CLIP training dicts: random ``image_size`` square pixels and a caption."""
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "image": random_image(image_size, image_size, gen),
            "caption": f"a red star next to a blue ring number {i}",
        }
        for i in range(batch)
    ]
