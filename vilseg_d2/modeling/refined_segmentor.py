"""``RefinedSemanticSegmentor``: Detectron2's ``SemanticSegmentor`` with ViL-Seg's mask refinement
(PAMR) on its inference output, so that a self-trained student is evaluated as ViL-Seg's refined
rows are."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor

from .mask_refinement import check_refinement_config, refine_masks

__all__ = ["RefinedSemanticSegmentor"]


@META_ARCH_REGISTRY.register()
class RefinedSemanticSegmentor(SemanticSegmentor):
    """A ``SemanticSegmentor`` whose class scores are refined along the image's colour affinities
    at inference (:func:`refine_masks`, ``MODEL.VILSEG.REFINE_ITERS`` steps with
    ``MODEL.VILSEG.REFINE_DILATIONS``). Training, parameters and checkpoints are the parent's: a
    ``SemanticSegmentor`` checkpoint loads as is, and with ``REFINE_ITERS`` 0 it is the parent.

    Output per image: ``{"sem_seg": K x height x width}``, the refined label map's class vote
    shares (the parent's logits when not refining). Refinement runs at the output size, on the
    input image resized to it.
    """

    @configurable
    def __init__(self, *, refine_iters: int, refine_dilations: Sequence[int], **kwargs):
        """
        Args:
            refine_iters: PAMR steps at inference; 0 = none.
            refine_dilations: the affinity's pixel dilations.
            kwargs: :class:`SemanticSegmentor`'s (backbone, sem_seg_head, pixel_mean, pixel_std).
        """
        super().__init__(**kwargs)
        check_refinement_config(refine_iters, refine_dilations)
        self.refine_iters = refine_iters
        self.refine_dilations = tuple(refine_dilations)

    @classmethod
    def from_config(cls, cfg):
        return {
            **super().from_config(cfg),
            "refine_iters": cfg.MODEL.VILSEG.REFINE_ITERS,
            "refine_dilations": cfg.MODEL.VILSEG.REFINE_DILATIONS,
        }

    def forward(self, batched_inputs: List[Dict]):
        results = super().forward(batched_inputs)
        if self.training or not self.refine_iters:
            return results
        for x, r in zip(batched_inputs, results):
            scores = r["sem_seg"]  # K x height x width
            image = (x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
            if image.shape[-2:] != scores.shape[-2:]:
                image = F.interpolate(
                    image[None], size=scores.shape[-2:], mode="bilinear", align_corners=False
                )[0]
            r["sem_seg"] = refine_masks(
                image, scores, iterations=self.refine_iters, dilations=self.refine_dilations
            )
        return results
