"""get_vilseg_cfg: a config asking for CUDA where there is none is an error, never a silent CPU
run."""

import pytest
import torch

from vilseg_d2.config import get_vilseg_cfg

from helpers import TINY_CONFIG


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_raises_saying_to_pass_cpu(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    opts = [] if device == "cuda" else ["MODEL.DEVICE", device]  # "cuda" is Detectron2's default
    with pytest.raises(
        RuntimeError, match=rf"CUDA was requested \(MODEL.DEVICE={device}\) but is not available"
    ) as e:
        get_vilseg_cfg(TINY_CONFIG, opts)
    assert "pass MODEL.DEVICE cpu" in str(e.value)


def test_cpu_is_kept_and_cuda_is_kept_where_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_vilseg_cfg(TINY_CONFIG, ["MODEL.DEVICE", "cpu"]).MODEL.DEVICE == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_vilseg_cfg(TINY_CONFIG).MODEL.DEVICE == "cuda"
