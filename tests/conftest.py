"""Shared pytest set-up: offline, seeded, small."""

import os

# Tests never touch the network: open_clip / huggingface_hub must fail fast if asked to download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
