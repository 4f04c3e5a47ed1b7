"""Small builders shared by the model tests."""

import os

from detectron2.config import get_cfg

from vilseg_d2 import add_vilseg_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "vilseg_tiny.yaml")


def tiny_cfg(**overrides):
    """The tiny CPU config, no test dataset, with ``KEY=value`` overrides (dots as '__')."""
    cfg = get_cfg()
    add_vilseg_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TEST = ()
    opts = []
    for k, v in overrides.items():
        opts += [k.replace("__", "."), v]
    cfg.merge_from_list(opts)
    return cfg
