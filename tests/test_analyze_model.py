"""tools/analyze_model.py and vilseg_d2.analysis on the tiny config: counts, memory, the plan."""

import json

import pytest
import torch
from detectron2.modeling import build_model

from vilseg_d2.analysis import (
    Margins,
    grad_checkpointing,
    plan_run,
    saved_bytes,
    training_flops,
    training_samples,
    training_storage,
)
from vilseg_d2.config import get_vilseg_cfg

from helpers import TINY_CONFIG, load_script

# The yaml's training schedule (auxiliary warm-up to iteration 1,020) stays: the tool must count
# a step with every objective in force. No mask refinement: it only slows the inference trace.
OPTS = ["DATASETS.TEST", "()", "MODEL.VILSEG.REFINE_ITERS", "0"]


def _load_tool():
    return load_script("tools/analyze_model.py", "analyze_model")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model's ops are small: one thread is as fast, and stays fast when other
    processes share the cores (several OpenMP threads then wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


@pytest.fixture(scope="module")
def run(tool, tmp_path_factory):
    """The tool's results (all tasks) and its JSON file."""
    out = tmp_path_factory.mktemp("analyze") / "tiny.json"
    results = tool.main(
        ["--config-file", TINY_CONFIG, "--output", str(out), "--num-gpus", "8", *OPTS]
    )
    with open(out, encoding="utf-8") as f:
        return results, json.load(f)


@pytest.fixture(scope="module")
def cfg():
    return get_vilseg_cfg(TINY_CONFIG, OPTS + ["MODEL.DEVICE", "cpu"])


@pytest.fixture(scope="module")
def model(cfg):
    return build_model(cfg)


def test_json_has_every_task_and_the_plan(run):
    results, saved = run
    assert set(saved) >= {"parameter", "flop", "activation", "memory", "plan", "seconds"}
    assert saved["plan"] == json.loads(json.dumps(results["plan"]))
    assert saved["seconds"]["total"] > 0


def test_parameters_match_the_model(tool, model, cfg):
    res = tool.do_parameter(model, cfg, None)
    total = sum(p.numel() for p in model.parameters())
    assert res["total"] == total == sum(c["parameters"] for c in res["by_module"].values())
    assert {"backbone", "text_encoder", "clustering_head", "projection_head"} <= set(
        res["by_module"]
    )
    teacher = sum(p.numel() for p in model.teacher.parameters())  # the config's momentum teacher
    assert res["trainable"] + res["frozen"] == total and res["frozen"] == teacher > 0
    model.text_encoder.clip.token_embedding.weight.requires_grad_(False)
    try:
        frozen = tool.do_parameter(model, cfg, None)["by_module"]["text_encoder"]["frozen"]
    finally:
        model.text_encoder.clip.token_embedding.weight.requires_grad_(True)
    assert frozen == model.text_encoder.clip.token_embedding.weight.numel()


def test_flops_add_up_over_the_views(run, cfg):
    flop = run[0]["flop"]
    inf, tr = flop["inference"], flop["training"]
    assert inf["per_image"] > 0 and inf["backbone"] > 0 and inf["image_size"] == [128, 128]
    assert inf["by_module"]["text_encoder"] > 0 and inf["per_image"] >= inf["backbone"]
    # The training forward: the image tower on 2 global-size views and V local crops, plus the
    # text tower, the heads and the criterion.
    v, pv, mods = cfg.INPUT.VILSEG, tr["per_view"], tr["by_module"]
    views = 2 * pv["global"] + v.NUM_LOCAL_CROPS * pv["local"]
    heads = ("text_encoder", "clustering_head", "projection_head", "criterion", "teacher")
    rest = sum(mods[m] for m in heads)
    assert tr["forward"] == pytest.approx(views + rest, rel=1e-3)
    assert pv["global"] > pv["local"] > 0 and mods["text_encoder"] > 0 and mods["criterion"] > 0
    # The test size is the global view's here, so one inference image's tower is ~one global view.
    assert inf["backbone"] == pytest.approx(pv["global"], rel=0.05)
    assert tr["forward"] > 2 * inf["backbone"]
    # the momentum teacher of the config runs forward only
    assert tr["forward_only_modules"] == ["teacher"] and mods["teacher"] > 0
    assert tr["forward_backward"] == tr["forward"] + 2 * (tr["forward"] - mods["teacher"])
    assert (
        tr["forward_backward_checkpointed"] == tr["forward_backward"] + tr["checkpoint_recompute"]
    )
    assert 0 < tr["checkpoint_recompute"] < pv["global"] * 2 + v.NUM_LOCAL_CROPS * pv["local"]
    clip = flop["clip_training"]
    assert clip["forward"] > 0 and flop["training_over_clip"] == pytest.approx(
        tr["forward"] / clip["forward"]
    )
    assert flop["training_over_clip"] > 2  # eight image views against one
    assert (
        run[0]["activation"]["training_sample"]["total"] > 0
        and run[0]["activation"]["inference"]["total"] > 0
    )


def test_checkpointing_saves_activation_memory(run):
    mem = run[0]["memory"]
    for key in ("fp32", "fp16"):
        plain, ckpt = mem[key]["no_checkpointing"], mem[key]["checkpointing"]
        assert plain["per_sample"] > ckpt["per_sample"] > 0
        assert plain["fixed"] >= 0 and ckpt["fixed"] >= 0
        assert mem[key]["checkpointing_saves"] == plain["per_sample"] - ckpt["per_sample"]
    assert (
        mem["fp16"]["no_checkpointing"]["per_sample"]
        < mem["fp32"]["no_checkpointing"]["per_sample"]
    )
    assert mem["half_measured_as"] == "bfloat16"
    state = mem["state_bytes"]
    assert (
        state["adamw"] == 2 * state["gradients"]
        and state["weights"] == 4 * run[0]["parameter"]["total"]
    )


def test_fp16_and_bf16_autocast_save_the_same_bytes(model, cfg):
    half = {
        dtype: saved_bytes(model, cfg, 1, dtype=dtype) for dtype in (torch.float16, torch.bfloat16)
    }
    assert half[torch.float16]["bytes"] == half[torch.bfloat16]["bytes"] > 0


def test_every_objective_in_force_and_checkpointed_backward(model, cfg):
    model.train()
    with training_storage(cfg), grad_checkpointing(model, True):
        assert model.backbone.visual.transformer.grad_checkpointing
        losses = model(training_samples(cfg, 2))
        sum(losses.values()).backward()
    assert set(losses) == {"loss_vision", "loss_cross", "loss_cluster"}
    assert not model.backbone.visual.transformer.grad_checkpointing  # restored
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


def test_plan_is_monotone_in_gpu_memory(run):
    plan = run[0]["plan"]
    rows = plan["rows"]
    assert [r["gpu_gib"] for r in rows] == [16, 24, 40, 80]
    for key in ("no_checkpointing", "checkpointing"):
        counts = [r["images_per_gpu"][key] for r in rows]
        assert counts == sorted(counts) and counts[0] > 0
    assert all(
        r["images_per_gpu"]["checkpointing"] >= r["images_per_gpu"]["no_checkpointing"]
        for r in rows
    )
    assert plan["config"]["images_per_gpu"] == 256 / 8
    assert plan["step"]["tflops_checkpointing"] > plan["step"]["tflops"] > 0


def test_plan_arithmetic():
    gib = 1024**3
    state = {"weights": gib, "gradients": gib, "adamw": 2 * gib, "ddp_buckets": gib}
    acts = {
        "no_checkpointing": {"per_sample": gib // 4, "fixed": 0},
        "checkpointing": {"per_sample": gib // 16, "fixed": 0},
    }
    plan = plan_run(
        state, acts, batch=64, num_gpus=8, num_blocks=3, gpu_gib=(8, 16), margins=Margins(0.0, 1.0)
    )
    # 8 GiB - 1 GiB reserve - 5 GiB state = 2 GiB: 8 images at 1/4 GiB; with checkpointing
    # 1/16 + (1/4 - 1/16) / 3 = 1/8 GiB per image: 16 images.
    assert plan["rows"][0]["images_per_gpu"] == {"no_checkpointing": 8, "checkpointing": 16}
    assert plan["config"]["fits"]["8"] == {"no_checkpointing": True, "checkpointing": True}
    small = plan_run(
        state, acts, batch=64, num_gpus=8, num_blocks=3, gpu_gib=(4,), margins=Margins(0.0, 1.0)
    )
    assert small["rows"][0]["images_per_gpu"] == {"no_checkpointing": 0, "checkpointing": 0}


def test_momentum_teacher_runs_forward_only(tool):
    cfg = get_vilseg_cfg(TINY_CONFIG, OPTS + ["MODEL.DEVICE", "cpu", "MODEL.VILSEG.TEACHER", "ema"])
    model = build_model(cfg)
    tr = training_flops(model, cfg)
    teacher = tr["by_module"]["teacher"]
    assert tr["forward_only_modules"] == ["teacher"] and teacher > 0
    assert tr["forward_backward"] == tr["forward"] + 2 * (tr["forward"] - teacher)
    params = tool.do_parameter(model, cfg, None)
    assert params["frozen"] == params["by_module"]["teacher"]["parameters"] > 0
