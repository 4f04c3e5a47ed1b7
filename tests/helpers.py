"""Small builders shared by the model tests."""

import importlib.util
import os

import torch

from vilseg_d2.config import get_vilseg_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "vilseg_tiny.yaml")


def tiny_cfg(**overrides):
    """The tiny CPU config, no test dataset, with ``KEY=value`` overrides (dots as '__').

    The three objectives are coupled as in the paper (no auxiliary warm-up, L_cluster reaching the
    encoder), which the unit tests exercise; the yaml's training schedule is for `make demo`.
    Inference is the paper's, without the yaml's mask refinement and background rules (their
    tests switch them on). The rest is the yaml's, e.g. the per-image joint distribution of
    L_cluster (`CLUSTER_JOINT`).
    """
    opts = [
        "MODEL.DEVICE",
        "cpu",
        "DATASETS.TEST",
        (),
        "MODEL.VILSEG.AUX_WARMUP_ITERS",
        (0, 0),
        "MODEL.VILSEG.DETACH_CLUSTER_ENCODER",
        False,
        "MODEL.VILSEG.REFINE_ITERS",
        0,
        "MODEL.VILSEG.BG_THRESHOLD",
        0.0,
        "MODEL.VILSEG.BG_GLOBAL_SIMILARITY",
        0.0,
    ]
    for k, v in overrides.items():
        opts += [k.replace("__", "."), v]
    return get_vilseg_cfg(TINY_CONFIG, opts)


def square_on_texture(size=64, lo=20, hi=44, seed=0):
    """A flat orange square [lo, hi)^2 on a noisy, slowly varying background: 3 x size x size in
    0-1."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.3, 0.6, size)
    image = torch.stack(
        [
            ramp[None].expand(size, size),
            ramp[:, None].expand(size, size),
            torch.full((size, size), 0.5),
        ]
    )
    image = image + 0.05 * torch.randn(3, size, size, generator=g)
    image[:, lo:hi, lo:hi] = torch.tensor([0.9, 0.5, 0.1]).view(3, 1, 1)
    truth = torch.zeros(size, size, dtype=torch.bool)
    truth[lo:hi, lo:hi] = True
    return image, truth


def load_script(path: str, name: str):
    """The module of a script of the repository (``tools/*.py``, ``datasets/*.py``: not package
    modules), ``path`` relative to the repository root, imported under ``name``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
