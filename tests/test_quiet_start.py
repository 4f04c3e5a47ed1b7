"""A quiet start: no third-party deprecation noise, no misleading random-init warning when
weights are loaded afterwards, and what the tools generate kept out of git."""

import logging
import os
import subprocess
import sys

from detectron2.modeling import build_model

from helpers import ROOT, tiny_cfg


def test_importing_the_package_prints_no_deprecation_warning():
    # -W default shows every warning once, as a user's interpreter would with warnings enabled
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import vilseg_d2, detectron2.engine"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "torch.jit.script` is deprecated" not in proc.stderr, proc.stderr


def test_building_without_pretrained_weights_logs_no_random_init_warning(caplog):
    with caplog.at_level(logging.WARNING):
        build_model(tiny_cfg())  # the towers' trained weights come from MODEL.WEIGHTS, if any
    assert "No pretrained weights loaded" not in caplog.text


def test_generated_data_is_ignored_by_git():
    ignored = {line.strip() for line in open(os.path.join(ROOT, ".gitignore"), encoding="utf-8")}
    for path in ("/output/", "/datasets/synthetic/", "/datasets/synthetic_heldout/", ".venv/"):
        assert path in ignored, path
