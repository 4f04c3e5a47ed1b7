"""Shared pytest set-up: offline, seeded, small."""

import os

# Tests never touch the network: open_clip / huggingface_hub must fail fast if asked to download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import logging  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def vlog(caplog):
    """Capture vilseg_d2's log even if Detectron2's setup_logger stopped its propagation."""
    lg = logging.getLogger("vilseg_d2")
    lg.addHandler(caplog.handler)
    old = lg.level
    lg.setLevel(logging.INFO)
    yield caplog
    lg.removeHandler(caplog.handler)
    lg.setLevel(old)
