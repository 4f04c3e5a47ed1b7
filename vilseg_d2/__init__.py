"""vilseg_d2: ViL-Seg as a Detectron2 extension. Importing it fills every registry."""

import warnings

# fvcore and Detectron2 compile small helpers with torch.jit.script at import, which torch now
# marks deprecated: a warning for every command that means nothing to a user of this project.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

from . import data, evaluation, modeling  # noqa: E402,F401  (registration side effects)
from .config import add_vilseg_backbone_config, add_vilseg_config  # noqa: E402

__all__ = ["add_vilseg_backbone_config", "add_vilseg_config"]
