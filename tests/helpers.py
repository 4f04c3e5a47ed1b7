"""Small builders shared by the model tests."""

import os

from vilseg_d2.config import get_vilseg_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "vilseg_tiny.yaml")


def tiny_cfg(**overrides):
    """The tiny CPU config, no test dataset, with ``KEY=value`` overrides (dots as '__').

    The three objectives are coupled as in the paper (no auxiliary warm-up, L_cluster reaching the
    encoder), which the unit tests exercise; the yaml's training schedule is for `make demo`. The
    rest is the yaml's, e.g. the per-image joint distribution of L_cluster (`CLUSTER_JOINT`).
    """
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TEST", (), "MODEL.VILSEG.AUX_WARMUP_ITERS", (0, 0),
            "MODEL.VILSEG.DETACH_CLUSTER_ENCODER", False]
    for k, v in overrides.items():
        opts += [k.replace("__", "."), v]
    return get_vilseg_cfg(TINY_CONFIG, opts)
