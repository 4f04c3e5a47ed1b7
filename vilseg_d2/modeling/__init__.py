"""ViL-Seg's modules. Importing this registers them and vilseg_d2's open_clip model configs."""

import os

import open_clip

# Ship small open_clip architectures (e.g. "ViLSeg-Tiny") next to open_clip's own.
open_clip.add_model_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "model_configs"))
