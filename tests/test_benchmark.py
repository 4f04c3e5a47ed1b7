"""tools/benchmark.py in its seconds-long tiny mode: the JSON's structure, never its speeds; and
the plan and the targets of vilseg_d2.benchmark on hand-made inputs."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from vilseg_d2.benchmark.plan import Profile
from vilseg_d2.benchmark.report import config_targets
from vilseg_d2.benchmark.worker import worker_jobs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("backbone", "online", "kmeans", "dense")


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_measurement(m, rate_key):
    assert m["reps"] >= 1 and m["warmup"] >= 0
    assert len(m["times_s"]) == m["reps"] and all(_positive(t) for t in m["times_s"])
    assert _positive(m["median_s"]) and _positive(m[rate_key])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "benchmark.py"),
        "--tiny",
        "--threads",
        "1",
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| target |" in proc.stdout  # the readable table
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def test_machine_and_settings(results):
    machine = results["machine"]
    assert machine["cpu_model"] and machine["torch"] and machine["python"]
    assert machine["torch_threads"] == 1 and results["settings"]["threads"] == 1
    assert results["settings"]["tiny"] is True
    assert "clear_refs" in results["settings"]["memory_method"]
    assert set(results["configs"]) == {"tiny"}
    assert _positive(results["total_s"])


def test_inference_vocabulary_and_sizes(results):
    res = results["configs"]["tiny"]
    for dtype in ("fp32", "bf16"):
        for mode in MODES:
            _check_measurement(res["inference"][dtype][mode], "images_per_s")
        assert set(res["vocabulary"][dtype]) == {"21", "1000"}
        for m in res["vocabulary"][dtype].values():
            _check_measurement(m, "images_per_s")
    assert _positive(res["vocabulary"]["text_encoding_s"]["1000"])
    sizes = res["sizes"]["results"]
    assert res["sizes"]["reference"] in sizes
    windowed = [m for m in sizes.values() if m["windows"] > 1]
    assert len(windowed) == 2 and {m["stride"] for m in windowed} == set(res["profile"]["strides"])
    for m in sizes.values():
        _check_measurement(m, "images_per_s")
        assert (
            _positive(m["time_over_area_proportional"]) and m["pixels"] == m["height"] * m["width"]
        )


def test_training_and_memory(results):
    res = results["configs"]["tiny"]
    for dtype in ("fp32", "bf16"):
        m = res["training"][f"train_{dtype}"]
        _check_measurement(m, "samples_per_s")
        assert m["batch"] == res["profile"]["train_batch"] and m["dtype"] == dtype
        assert _positive(m["memory"]["peak_rss_bytes"]) and m["memory"]["peak_reset"] is True
        inf = res["memory"][f"inference_{dtype}"]
        assert inf["memory"]["peak_rss_bytes"] >= inf["memory"]["rss_at_start_bytes"] > 0
    assert res["memory"]["method"] and _positive(res["memory"]["rss_after_build_bytes"])


def test_loader(results):
    loader = results["loader"]
    _check_measurement(loader["mapper"], "samples_per_s")
    _check_measurement(loader["loader"], "samples_per_s")
    assert loader["loader"]["num_workers"] == 2 and loader["mapper"]["threads"] == 1
    assert _positive(loader["consumption"]["samples_per_s"])


def test_targets(results):
    targets = results["targets"]
    names = {t["name"] for t in targets}
    expected = {
        "tiny/online_over_backbone_fp32",
        "tiny/online_speedup_over_kmeans_fp32",
        "tiny/vocab1000_over_vocab21_fp32",
        "tiny/bf16_speedup_online",
        "tiny/sliding_window_linearity",
        "tiny/inference_peak_rss_gib",
        "tiny/onnxruntime_speedup_fp32",
        "loader_over_training_consumption",
        "export_miou_abs_diff",
    }
    assert expected <= names
    for t in targets:
        assert set(t) >= {"name", "measured", "threshold", "comparison", "met", "description"}
        # a difference may be 0
        measured_ok = (
            t["measured"] >= 0 if t["name"].endswith("_diff") else _positive(t["measured"])
        )
        assert measured_ok and _positive(t["threshold"])
        assert isinstance(t["met"], bool) and t["comparison"] in ("<=", ">=")
        assert t["met"] == (
            t["measured"] <= t["threshold"]
            if t["comparison"] == "<="
            else t["measured"] >= t["threshold"]
        )


def test_export_section(results):
    """onnxruntime fp32 (in a process without torch) against PyTorch eager fp32 and bf16, and the
    mIoU through both (tiny: an untrained model on 6 generated images)."""
    res = results["configs"]["tiny"]["export"]
    assert res["image_size"] == [64, 64] and res["mode"] == "online" and res["model_bytes"] > 0
    ort = res["onnxruntime_fp32"]
    _check_measurement(ort, "images_per_s")
    assert ort["torch_imported"] is False and ort["memory"]["peak_rss_bytes"] > 0
    for dtype in ("fp32", "bf16"):
        m = res[f"pytorch_{dtype}"]
        _check_measurement(m, "images_per_s")
        assert m["memory"]["peak_rss_bytes"] > 0
        assert res["speedup_over_pytorch"][dtype] == m["median_s"] / ort["median_s"]
    assert res["parity"]["max_abs_diff"] < 1e-4 and res["parity"]["label_agreement"] >= 0.999
    miou = results["export_miou"]
    assert miou["images"] == 6 and miou["inference"]["refine_iters"] == 10
    assert 0 <= miou["mIoU_pytorch"] <= 100 and miou["mIoU_abs_diff"] <= 0.1
    assert miou["label_agreement"] >= 0.999


def test_mean_iou_counts_as_sem_seg_evaluator():
    from vilseg_d2.benchmark.export import mean_iou

    # rows: truth. Class 0: IoU 2/3; class 1: 3/5; class 2 only predicted (counts, as 0); class 3
    # absent from both (does not count)
    confusion = np.array([[2, 1, 0, 0], [0, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert mean_iou(confusion) == pytest.approx(100 * (2 / 3 + 3 / 5) / 3)


def test_clip_step_comparison(results):
    res = results["configs"]["tiny"]
    comparison = res["clip_comparison"]
    flops = comparison["flops_per_sample"]
    assert comparison["flop_ratio"] == flops["ratio"]
    assert flops["ratio"] == flops["vilseg_forward"] / flops["clip_forward"]
    assert flops["ratio"] > 1  # eight image views per sample against one
    for dtype in ("fp32", "bf16"):
        clip = res["training"][f"clip_train_{dtype}"]
        _check_measurement(clip, "samples_per_s")
        assert clip["batch"] == res["profile"]["train_batch"] and clip["dtype"] == dtype
        c = comparison[dtype]
        assert c["clip_step_s"] == clip["median_s"]
        assert c["vilseg_step_s"] == res["training"][f"train_{dtype}"]["median_s"]
        assert c["time_ratio"] == c["vilseg_step_s"] / c["clip_step_s"]


def test_schedule_and_worker_jobs():
    profile = Profile(
        name="x",
        config_file="x.yaml",
        base_size=64,
        sizes=((64, 64),),
        large_size=(128, 256),
        window=64,
        strides=(64, 48),
        consumption_batch=16,
        caps={"train_fp32": (0, 1)},
        warmup=1,
        reps=3,
    )
    assert profile.schedule() == (1, 3) and profile.schedule("train_fp32") == (0, 1)
    jobs = {j["name"]: j for j in worker_jobs(profile)}
    assert list(jobs) == [
        "inference_fp32",
        "inference_bf16",
        "train_fp32",
        "train_bf16",
        "clip_train_fp32",
        "clip_train_bf16",
        "train_bf16_batch16",
    ]
    assert jobs["train_fp32"]["reps"] == 1 and jobs["clip_train_fp32"]["warmup"] == 0
    assert jobs["train_bf16_batch16"]["batch"] == 16 and jobs["train_bf16"]["batch"] == 8


def test_config_targets_only_what_was_measured():
    inference = {"backbone": 1.0, "online": 1.05, "kmeans": 2.0}
    res = {
        "profile": {"base_size": 64, "vocab_sizes": [21, 1000], "window": 64},
        "inference": {"fp32": {k: {"median_s": v} for k, v in inference.items()}},
    }
    targets = {t["name"]: t for t in config_targets("x", res)}
    assert set(targets) == {"x/online_over_backbone_fp32", "x/online_speedup_over_kmeans_fp32"}
    assert targets["x/online_over_backbone_fp32"]["met"] is True
    assert targets["x/online_speedup_over_kmeans_fp32"]["measured"] == 2.0 / 1.05


def test_training_profile(tmp_path):
    """``--profile training``: the step before and after the CPU tuning, A/B, with the top
    operators of each (tiny: the L_cross step at batch 8, one repetition)."""
    out = tmp_path / "training.json"
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--profile", "training"]
    cmd += ["--tiny", "--threads", "1", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| tiny_cross | batch 8, bf16 |" in proc.stdout
    with open(out, encoding="utf-8") as f:
        step = json.load(f)["training_profile"]["tiny_cross"]
    assert step["phase"] == "cross" and step["batch"] == 8
    assert "MODEL.OPEN_CLIP.ATTENTION" in step["before_opts"]
    for variant in ("before", "now"):
        assert len(step[variant]["times_s"]) == 1 and _positive(step[variant]["median_s"])
        ops = step["top_operators"][variant]
        assert ops and all(_positive(op["self_cpu_ms_per_step"]) for op in ops)
        assert 0 < sum(op["share"] for op in ops) <= 1.0 + 1e-6
    assert step["speedup"] == pytest.approx(step["before"]["median_s"] / step["now"]["median_s"])
    # open_clip's attention is what "before" runs; the tuned step has no fused CPU kernel
    names = {op["name"] for op in step["top_operators"]["now"]}
    assert not any("flash_attention" in n for n in names)
