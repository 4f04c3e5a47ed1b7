"""The evaluation configs say which reading of the protocol they are, the "CLIP + Seg" baseline is
pretrained CLIP evaluated without MODEL.WEIGHTS, and --eval-only never evaluates a random model."""

import functools
import glob
import math
import os
import re

import open_clip
import pytest
import torch
from detectron2.modeling import build_model

from vilseg_d2.config import get_vilseg_cfg
from vilseg_d2.data import generate_synthetic_world, register_synthetic_world
from vilseg_d2.engine import ViLSegTrainer, load_eval_weights

from helpers import ROOT, tiny_cfg

CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
)
EVAL_CONFIGS = [c for c in CONFIGS if c.startswith(("configs/eval/", "configs/baselines/"))]


def load(config, *opts):
    return get_vilseg_cfg(os.path.join(ROOT, config), ["MODEL.DEVICE", "cpu", *opts])


def value(cfg, key):
    return functools.reduce(getattr, key.split("."), cfg)


def first_comment(config):
    with open(os.path.join(ROOT, config), encoding="utf-8") as f:
        return next(line for line in f if line.startswith("#"))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_loads(config):
    load(config)


def test_repo_points_only_to_configs_that_exist():
    """A renamed config leaves no reference to its old name behind."""
    files = [os.path.join(ROOT, f) for f in ("README.md", "Makefile", "datasets/README.md")]
    for folder in ("configs", "docs", "tools", "tests", "vilseg_d2", "datasets"):
        files += glob.glob(os.path.join(ROOT, folder, "**", "*.*"), recursive=True)
    for path in files:
        if not path.endswith((".py", ".md", ".yaml")) and not path.endswith("Makefile"):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for ref in re.findall(r"configs/[\w./-]+\.yaml", text):
            assert os.path.isfile(
                os.path.join(ROOT, ref)
            ), f"{os.path.relpath(path, ROOT)} refers to {ref}"


@pytest.mark.parametrize("config", EVAL_CONFIGS)
def test_eval_configs_name_their_reading_of_the_protocol(config):
    cfg = load(config)
    line = first_comment(config)
    if cfg.TEST.VILSEG.VOCABULARY == "unseen":
        assert config.endswith("_unseen.yaml") and line.startswith("# Zero-shot (ZS) reading"), line
    else:
        assert config.endswith("_all.yaml") and line.startswith(
            "# Generalised zero-shot (GZS) reading"
        ), line


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("configs/baselines/")])
def test_clip_seg_baselines_are_pretrained_clip_on_the_eval_protocols(config):
    cfg = load(config)
    assert os.path.basename(config).startswith("clip_seg_vitb16_")
    assert (cfg.MODEL.OPEN_CLIP.MODEL_NAME, cfg.MODEL.OPEN_CLIP.PRETRAINED) == (
        "ViT-B-16",
        "openai",
    )
    assert cfg.MODEL.VILSEG.INFERENCE_MODE == "dense" and cfg.MODEL.WEIGHTS == ""
    ours = load(config.replace("baselines/clip_seg_", "eval/vilseg_"))
    for key in ("DATASETS.TEST", "TEST.VILSEG.VOCABULARY", "MODEL.VILSEG.SLIDING_WINDOW_SIZE",
                "MODEL.VILSEG.SLIDING_WINDOW_STRIDE", "MODEL.VILSEG.BG_THRESHOLD",
                "MODEL.VILSEG.TEXT.TEMPLATES",
                "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST"):  # fmt: skip
        assert value(cfg, key) == value(ours, key), key  # the same protocol as ViL-Seg's


def test_clip_seg_baseline_offline_says_the_weights_cannot_be_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load(
        "configs/baselines/clip_seg_vitb16_voc_unseen.yaml",
        "MODEL.OPEN_CLIP.CACHE_DIR",
        str(tmp_path),
    )
    with pytest.raises(
        RuntimeError, match=r"Cannot download the open_clip weights ViT-B-16/openai: no network"
    ):
        build_model(cfg)


@pytest.fixture
def pretrained_tiny(tmp_path):
    """A local open_clip checkpoint of the tiny architecture, as PRETRAINED takes it."""
    torch.manual_seed(1)
    clip = open_clip.create_model("ViLSeg-Tiny")
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(55.0))
    path = tmp_path / "open_clip_tiny.pt"
    torch.save(clip.state_dict(), path)
    return clip, str(path)


def pretrained_cfg(path, **overrides):
    """The tiny config on pretrained towers (no conv stem: the checkpoint has none), dense
    inference."""
    opts = {"MODEL__OPEN_CLIP__PRETRAINED": path, "MODEL__CLIP_VIT__CONV_STEM": False,
            "MODEL__VILSEG__INFERENCE_MODE": "dense", **overrides}  # fmt: skip
    return tiny_cfg(**opts)


@pytest.mark.parametrize("resume", [False, True])
def test_eval_without_weights_keeps_the_pretrained_towers(pretrained_tiny, tmp_path, vlog, resume):
    clip, path = pretrained_tiny
    cfg = pretrained_cfg(path, OUTPUT_DIR=str(tmp_path / "out"))
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_eval_weights(cfg, model, resume=resume)  # what tools/train_net.py --eval-only does
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(
        model.backbone.visual.transformer.resblocks[0].attn.in_proj_weight,
        clip.visual.transformer.resblocks[0].attn.in_proj_weight,
    )
    torch.testing.assert_close(
        model.text_encoder.clip.token_embedding.weight, clip.token_embedding.weight
    )
    assert float(model.scale().detach()) == pytest.approx(55.0, rel=1e-6)
    assert "evaluating the open_clip towers ViLSeg-Tiny" in vlog.text


def test_eval_without_weights_or_pretrained_towers_is_refused(tmp_path):
    cfg = tiny_cfg(OUTPUT_DIR=str(tmp_path))
    with pytest.raises(ValueError, match="would be evaluated at its random initialisation"):
        load_eval_weights(cfg, build_model(cfg))


def test_online_inference_without_weights_warns_of_the_random_head(pretrained_tiny, tmp_path, vlog):
    _, path = pretrained_tiny
    cfg = pretrained_cfg(path, MODEL__VILSEG__INFERENCE_MODE="online", OUTPUT_DIR=str(tmp_path))
    load_eval_weights(cfg, build_model(cfg))
    assert "clustering head is at its random initialisation" in vlog.text


def test_clip_seg_path_evaluates_pretrained_towers_end_to_end(pretrained_tiny, tmp_path):
    """The baseline's path on the synthetic world: pretrained towers, dense, no MODEL.WEIGHTS."""
    _, path = pretrained_tiny
    root = tmp_path / "synthetic"
    generate_synthetic_world(str(root), num_train=8, num_val=3, seed=0, num_workers=0)
    register_synthetic_world(str(root))
    try:
        cfg = pretrained_cfg(
            path,
            OUTPUT_DIR=str(tmp_path / "out"),
            DATASETS__TEST=("synthetic_sem_seg_val",),
            DATALOADER__NUM_WORKERS=0,
        )
        model = build_model(cfg)
        load_eval_weights(cfg, model)
        res = ViLSegTrainer.test(cfg, model)["sem_seg"]
        assert 0 <= res["mIoU"] <= 100 and "IoU-circle" in res
    finally:
        register_synthetic_world()
