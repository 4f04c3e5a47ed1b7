"""ViL-Seg's modules. Importing this registers them and vilseg_d2's open_clip model configs."""

import os

import open_clip

# Ship small open_clip architectures (e.g. "ViLSeg-Tiny") next to open_clip's own.
open_clip.add_model_config(
    os.path.join(os.path.dirname(os.path.dirname(__file__)), "model_configs")
)

from .backbone import D2OpenCLIPViT, D2OpenCLIPViTPyramid  # noqa: E402
from .clustering_head import ViLSegClusteringHead  # noqa: E402
from .criterion import ViLSegCriterion  # noqa: E402
from .losses import (  # noqa: E402
    cross_modal_contrastive_loss,
    mutual_information_loss,
    self_distillation_loss,
)
from .mask_refinement import local_affinity, refine_masks  # noqa: E402
from .meta_arch import ViLSeg  # noqa: E402
from .projection_head import ViLSegProjectionHead  # noqa: E402
from .refined_segmentor import RefinedSemanticSegmentor  # noqa: E402
from .segmenter import ViLSegSegmenter  # noqa: E402
from .teacher import MomentumTeacher  # noqa: E402
from .text_encoder import ViLSegTextEncoder, duplicate_classes, parse_vocabulary  # noqa: E402

__all__ = [
    "D2OpenCLIPViT",
    "D2OpenCLIPViTPyramid",
    "ViLSegClusteringHead",
    "ViLSegCriterion",
    "ViLSegProjectionHead",
    "RefinedSemanticSegmentor",
    "ViLSegSegmenter",
    "MomentumTeacher",
    "ViLSegTextEncoder",
    "ViLSeg",
    "cross_modal_contrastive_loss",
    "self_distillation_loss",
    "mutual_information_loss",
    "duplicate_classes",
    "parse_vocabulary",
    "local_affinity",
    "refine_masks",
]
