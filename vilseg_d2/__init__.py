"""vilseg_d2: ViL-Seg as a Detectron2 extension. Importing it fills every registry."""

from . import data, evaluation, modeling  # noqa: F401  (registration side effects)
from .config import add_vilseg_backbone_config, add_vilseg_config

__all__ = ["add_vilseg_backbone_config", "add_vilseg_config"]
