#!/usr/bin/env python
"""Inference and training throughput of ViL-Seg on CPU, as JSON and a readable table.

    tools/benchmark.py --output bench.json          # ViT-B/16 (random init) + tiny, all sections
    tools/benchmark.py --tiny --output tiny.json    # seconds: tiny config, small sizes, 1 rep
    tools/benchmark.py --config-file configs/vilseg_tiny.yaml --reps 5 --threads 1 \\
        --opts MODEL.VILSEG.NUM_CLUSTERS 20

Sections (``--sections``, default all):

* ``inference``: at the config's test size, the bare backbone (``model.backbone`` on the same
  normalised padded tensor the full path uses) and the full ``online`` / ``kmeans`` / ``dense``
  inference (``model([{"image", "vocabulary"}])`` in eval mode), fp32 and bf16 autocast.
* ``vocabulary``: ``online`` with the 21 PASCAL VOC classes and with 1,000 synthetic class names
  (text features cached before timing; the one-time encoding is reported separately).
* ``sizes``: ``online`` (fp32) at half, one and two times the test size, and a large image
  (2048x1024 for ViT-B/16) by sliding window, non-overlapping and with the eval configs' overlap.
* ``training``: one iteration (forward + backward + AdamW step through the project's
  ``AutocastTrainer``) on batch 8 of fake training dicts, fp32 and bf16, timed in a fresh
  subprocess per config, which also gives the peak memory of training and of inference. The
  same subprocess times open_clip's own CLIP step (``open_clip.create_model`` of the config's
  model name with ``ClipLoss``: the same towers, batch, dtype, trainer and AdamW) and
  ``clip_comparison`` puts ViL-Seg's step time over CLIP's next to their training FLOPs per
  sample (``vilseg_d2.analysis``, as ``tools/analyze_model.py`` counts them).
* ``loader``: the caption mapper's samples/s on one thread and the training loader's samples/s
  with 2 workers, on a small synthetic world written to a temporary folder (tiny config).
* ``export``: ``online`` inference exported to ONNX with the 21-class vocabulary (its file size
  and export time), timed in onnxruntime fp32 (a fresh process without torch, its peak RSS)
  against PyTorch eager fp32 and bf16 at the base size (peak RSS in the worker subprocess), with
  their largest score difference; and ``export_miou``: the demo model (``make demo``'s
  ``output/demo/train``, its online refined inference) on the synthetic validation set, mIoU
  through the torch-free runtime and through PyTorch (``--tiny``: an untrained tiny model on 6
  generated images).

``--profile training`` measures instead the training step before and after its CPU tuning, A/B in
one process (``vilseg_d2/benchmark/training_profile.py``): the demo config's L_cross step and its
all-objective step at its batch of 256, and ViT-B/16's all-objective step at batch 8, with the
top operators of each, the compiled L_cross step (``SOLVER.COMPILE``, compile time apart) and the
L_cross step fed by its caption loader::

    tools/benchmark.py --profile training --output training.json

Every figure is the median of several repetitions after warm-up; slow items use fewer
repetitions (each figure records its own ``warmup`` and ``reps``). The JSON also holds the
machine (CPU model, torch threads), the settings and the issue's targets with ``met`` flags.

This file parses the command line and runs the sections; what they measure, and how, is in
``vilseg_d2/benchmark/`` (``plan``, ``harness``, ``inference``, ``worker``, ``loader``,
``report``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Dict, Optional, Sequence

# vilseg_d2 first: it fills the registries and quiets third-party import warnings.
# isort: off
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vilseg_d2  # noqa: E402,F401

# isort: on

import torch
from detectron2.modeling import build_model

from vilseg_d2.analysis import training_flop_ratio
from vilseg_d2.benchmark.export import export_miou_section, export_section
from vilseg_d2.benchmark.harness import MEMORY_METHOD, log
from vilseg_d2.benchmark.inference import (
    cache_vocabulary,
    inference_section,
    sizes_section,
    vocabulary_section,
)
from vilseg_d2.benchmark.loader import loader_section
from vilseg_d2.benchmark.plan import (
    SECTIONS,
    Profile,
    load_cfg,
    profile_for,
    synthetic_vocabulary,
)
from vilseg_d2.benchmark.report import (
    config_targets,
    export_miou_target,
    format_table,
    format_training_profile,
    load_average,
    loader_target,
    machine_info,
    target_configs,
)
from vilseg_d2.benchmark.training_profile import default_steps, training_profile
from vilseg_d2.benchmark.worker import clip_comparison, run_worker
from vilseg_d2.errors import run_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VITB16_CONFIG = os.path.join(REPO, "configs", "vilseg_vitb16.yaml")
TINY_CONFIG = os.path.join(REPO, "configs", "vilseg_tiny.yaml")


def run_config(profile: Profile, args) -> Dict:
    """Every in-process section of one config, then its training / memory subprocess."""
    cfg = load_cfg(profile.config_file, args.opts)
    start = time.perf_counter()
    model = build_model(cfg).eval()
    out: Dict = {
        "config_file": os.path.relpath(profile.config_file, REPO),
        "model": cfg.MODEL.OPEN_CLIP.MODEL_NAME,
        "parameters": sum(p.numel() for p in model.parameters()),
        "clustering_head_parameters": sum(p.numel() for p in model.clustering_head.parameters()),
        "num_clusters": int(cfg.MODEL.VILSEG.NUM_CLUSTERS),
        "build_s": time.perf_counter() - start,
        "profile": asdict(profile),
    }
    vocabularies = {n: synthetic_vocabulary(n) for n in profile.vocab_sizes}
    text_seconds = {
        str(n): cache_vocabulary(model, v, profile.text_dtype) for n, v in vocabularies.items()
    }
    text_seconds["dtype"] = profile.text_dtype
    small = vocabularies[profile.vocab_sizes[0]]
    if "inference" in args.sections:
        out["inference"] = inference_section(model, profile, small)
    if "vocabulary" in args.sections:
        out["vocabulary"] = vocabulary_section(model, profile, vocabularies, text_seconds)
    if "sizes" in args.sections:
        out["sizes"] = sizes_section(model, profile, small)
    if "export" in args.sections:
        out["export"] = export_section(model, profile, small, args.opts, args.threads)
    if "training" in args.sections:
        flops = training_flop_ratio(model, cfg)
        log(f"{profile.name} training FLOPs per sample, ViL-Seg / CLIP: {flops['ratio']:.2f}")
    del model
    gc.collect()
    if "training" in args.sections:
        try:
            worker = run_worker(profile, args.opts, args.threads)
        except subprocess.CalledProcessError as e:  # keep what was measured; main() exits with 1
            out["errors"] = [f"training/memory subprocess failed: {e}"]
            log(out["errors"][0])
            return out
        jobs = worker.pop("jobs")
        steps = ("train_", "clip_train_")
        out["training"] = {k: v for k, v in jobs.items() if k.startswith(steps)}
        out["clip_comparison"] = clip_comparison(out["training"], flops)
        views = cfg.INPUT.VILSEG.NUM_LOCAL_CROPS
        out["training"]["views_per_sample"] = "1 global + %d local + 1 transformed" % views
        memory = {k: v for k, v in jobs.items() if k.startswith("inference_")}
        out["memory"] = dict(worker, **memory)
    return out


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="ViL-Seg CPU benchmark: inference, training and loader throughput."
    )
    p.add_argument(
        "--config-file",
        action="append",
        metavar="FILE",
        help="config to measure (repeatable); default: the ViT-B/16 and the tiny config",
    )
    p.add_argument("--output", default="benchmark.json", help="JSON output path")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="seconds-long check: tiny config only, small sizes, 1 repetition, no warm-up",
    )
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3; tiny: 1)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed warm-up calls (default 1; tiny: 0)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument(
        "--profile",
        choices=("sections", "training"),
        default="sections",
        help="'training': the training step before / after its CPU tuning, A/B (not the sections)",
    )
    p.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ..."
    )
    return p


def _config_name(path: str) -> str:
    if os.path.abspath(path) == VITB16_CONFIG:
        return "vitb16"
    if os.path.abspath(path) == TINY_CONFIG:
        return "tiny"
    return os.path.splitext(os.path.basename(path))[0]


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = get_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps if args.reps is not None else (1 if args.tiny else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 1)
    files = args.config_file or ([TINY_CONFIG] if args.tiny else [VITB16_CONFIG, TINY_CONFIG])
    files = [os.path.abspath(f) for f in files]
    start = time.perf_counter()
    results: Dict = {
        "machine": machine_info(),
        "settings": {
            "argv": sys.argv[1:] if argv is None else list(argv),
            "tiny": args.tiny,
            "reps": reps,
            "warmup": warmup,
            "threads": torch.get_num_threads(),
            "sections": args.sections,
            "opts": args.opts,
            "memory_method": MEMORY_METHOD,
        },
        "configs": {},
    }
    if args.profile == "training":
        return _training_profile(args, results, start)
    for path in files:
        cfg = load_cfg(path, args.opts)
        profile = profile_for(
            _config_name(path), path, cfg, tiny=args.tiny, warmup=warmup, reps=reps
        )
        log(f"config {profile.name} ({os.path.relpath(path, REPO)})")
        results["configs"][profile.name] = run_config(profile, args)
    if "loader" in args.sections:
        results["loader"] = loader_section(TINY_CONFIG, args.opts, args.tiny, warmup, reps)
    if "export" in args.sections:
        results["export_miou"] = export_miou_section(args.tiny, torch.get_num_threads())
    measured = target_configs(results)
    results["targets"] = [t for n in measured for t in config_targets(n, results["configs"][n])]
    results["targets"] += loader_target(results) + export_miou_target(results)
    results["total_s"] = time.perf_counter() - start
    results["machine"]["load_average_at_end"] = load_average()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(format_table(results))
    machine = results["machine"]
    print(
        f"\n{machine['cpu_model']}, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}; total {results['total_s']:.0f} s; JSON: {args.output}"
    )
    errors = [e for res in results["configs"].values() for e in res.get("errors", [])]
    if errors:
        raise SystemExit("Some measurements failed: " + "; ".join(errors))
    return results


def _training_profile(args, results: Dict, start: float) -> Dict:
    """``--profile training``: the A/B of the training step, JSON and a short table."""
    results["training_profile"] = training_profile(
        default_steps(TINY_CONFIG, VITB16_CONFIG, quick=args.tiny), args.opts
    )
    results["total_s"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(format_training_profile(results["training_profile"]))
    print(f"\ntotal {results['total_s']:.0f} s; JSON: {args.output}")
    return results


if __name__ == "__main__":
    run_tool(main)
