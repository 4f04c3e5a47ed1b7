#!/usr/bin/env python
"""`make demo`: ViL-Seg learns to segment the synthetic caption world from captions alone, on CPU.

1. generates the synthetic caption world (captions for training, masks only for evaluation)
   under ``--data`` unless it is already there;
2. trains the tiny ViL-Seg (configs/vilseg_tiny.yaml) on its captions (bf16 autocast where the
   CPU computes bf16 natively, else fp32: ``--precision``; log with ETA; re-running resumes or
   reuses the finished model);
3. evaluates it on ``synthetic_sem_seg_val`` with SemSegEvaluator in the three inference modes
   (online = the paper, K-means, dense per-pixel matching), each with the background rules
   (``MODEL.VILSEG.BG_THRESHOLD``, ``BG_GLOBAL_SIMILARITY``) that scored best on a second,
   held-out synthetic world (seed 1; its masks are never the reported ones);
4. with ``--spread``, the recipe's whole-run spread: ``--seeds`` whole runs (the demo's SEED and
   the ones after it, every iteration trained anew), every row's mean and sample standard
   deviation, and for each run a diagnosis on the held-out world (L_cross at the end of its
   phase, the clusters' use and purity, the mIoU without colours);
   with ``--ablation``, also the paper's Table 2 over those seeds: ViL-Seg (online), without
   L_vision (online) and without the clustering head (L_cluster off; dataset-level and per-image
   K-means), each trained from its seed's own end of the L_cross phase in its whole run (the
   weights of its checkpoint at iteration ``AUX_WARMUP_ITERS[0] - 1``, a fresh optimizer) with
   that SEED. Mean ± sample std per column, and each column's paired differences to ViL-Seg;
5. with ``--self-training``, "ViL-Seg + ST": the model, with its own inference (``config.yaml``),
   pseudo-labels the first ``--st-images`` caption images (captions unused; other images than
   the validation ones), keeping per class the ``--st-keep`` most confident share of its pixels,
   and Detectron2's SemanticSegmentor of configs/self_training/synthetic_fpn.yaml, its encoder
   initialised from the model's, trains on them and is evaluated like the model;
6. writes ``metrics.json``, ``results.md`` and overlay pictures to ``--output``, prints the
   table and, for the recipe of configs/vilseg_tiny.yaml, where its rows fall against the
   recipe's measured whole runs (``vilseg_d2/demo/reference.py``).
"""

import argparse
import json
import logging
import os
import sys
import time

# The loader's worker shares the CPU with training: OpenMP threads that sleep when idle, instead
# of spinning, leave it the cycles (the L_cross step of configs/vilseg_tiny.yaml: 1.04 s against
# 1.15 s on 2 cores, docs/benchmarks.md). Read by OpenMP when torch loads: set before importing it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# vilseg_d2 first: it fills the registries and quiets third-party import warnings.
# isort: off
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import vilseg_d2  # noqa: E402,F401

# isort: on

import open_clip
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

from vilseg_d2.data import generate_synthetic_world, register_synthetic_world
from vilseg_d2.demo import (
    MODES,
    ablation_table,
    diagnose,
    differences_table,
    draw_pictures,
    evaluate_rows,
    held_out_world,
    make_cfg,
    paired_differences,
    placement,
    results_table,
    run_ablation,
    self_training,
    train,
    training_precision,
    whole_runs,
)
from vilseg_d2.errors import run_tool
from vilseg_d2.modeling.text_encoder import check_caption_lengths

logger = logging.getLogger("vilseg_demo")
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "vilseg_tiny.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/demo")
    p.add_argument(
        "--data", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic")
    )
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also the paper's Table 2: ViL-Seg, w/o L_vision and w/o clustering head over seeds",
    )
    p.add_argument(
        "--spread",
        action="store_true",
        help="also whole runs of the recipe over --seeds seeds: each row's mean ± std",
    )
    p.add_argument(
        "--seeds", type=int, default=3, help="whole runs (--spread) and seeds per --ablation column"
    )
    p.add_argument(
        "--self-training",
        action="store_true",
        help="also ViL-Seg + ST: pseudo-labels, then a student trained on them",
    )
    p.add_argument("--st-images", type=int, default=2000, help="caption images pseudo-labelled")
    p.add_argument("--st-keep", type=float, default=0.5,
                   help="share of each class's pixels kept as pseudo-labels")  # fmt: skip
    p.add_argument("--st-opts", nargs="*", default=[],
                   help="overrides of the student's config, KEY VALUE ...")  # fmt: skip
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="training autocast; auto: bf16 where the CPU computes it natively (AVX512 "
                        "and newer), else fp32 (emulated bf16 is far slower)")  # fmt: skip
    p.add_argument("--pictures", type=int, default=8, help="validation images to draw")
    p.add_argument("--calibration-images", type=int, default=200,
                   help="images of the held-out world on which the background rules are chosen "
                        "per mode (captions never name the background as a thing); 0 keeps the "
                        "config's rules")  # fmt: skip
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = p.parse_args(argv)
    if args.opts[:1] == ["--"]:  # ends --st-opts before the model's overrides
        args.opts = args.opts[1:]
    return args


def ensure_world(data_dir: str, model_name: str) -> None:
    meta = os.path.join(data_dir, "meta.json")
    if os.path.isfile(meta):
        logger.info(f"Using the synthetic world in {data_dir}.")
    else:
        logger.info(f"Generating the synthetic caption world in {data_dir} ...")
        generate_synthetic_world(data_dir)
    register_synthetic_world(data_dir)
    manifest = os.path.join(data_dir, "train.jsonl")
    with open(manifest, encoding="utf-8") as f:
        captions = [json.loads(line)["caption"] for line in f if line.strip()]
    context = open_clip.get_model_config(model_name)["text_cfg"].get("context_length", 77)
    longest = check_caption_lengths(
        captions, open_clip.get_tokenizer(model_name), context, source=manifest
    )
    logger.info(f"The longest caption has {longest} of the text tower's {context} tokens.")


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    for name in ("detectron2", "vilseg_d2", "vilseg_demo"):
        setup_logger(output=os.path.join(args.output, "demo_log.txt"), name=name)
    t0 = time.perf_counter()
    args.precision = training_precision(args.precision)
    cfg = make_cfg(args, os.path.join(args.output, "train"))
    ensure_world(args.data, cfg.MODEL.OPEN_CLIP.MODEL_NAME)

    classes = MetadataCatalog.get("synthetic_sem_seg_val").stuff_classes
    held_out = (
        held_out_world(args.data, args.calibration_images) if args.calibration_images > 0 else None
    )
    model, seconds = train(cfg)
    rows = evaluate_rows(cfg, model, MODES, held_out, classes)
    metrics = {"ViL-Seg": {"train_seconds": seconds, **rows}}
    metrics["diagnosis"] = diagnose(cfg, model, held_out, classes) if held_out else None
    draw_pictures(cfg, model, os.path.join(args.output, "pictures"), args.pictures)
    if args.self_training:
        metrics["ViL-Seg + ST"] = self_training(args, cfg)
    if args.spread or args.ablation:
        record = {"rows": rows, "diagnosis": metrics["diagnosis"]}
        metrics["whole_runs"] = whole_runs(args, cfg, record, held_out, classes)
    if args.ablation:
        metrics["ablation"] = run_ablation(args, cfg, held_out, classes)
        metrics["differences"] = paired_differences(
            metrics["ablation"], metrics["whole_runs"]["ViL-Seg"]
        )
    metrics["wall_seconds"] = time.perf_counter() - t0

    table = results_table(metrics, cfg.MODEL.VILSEG)
    for key, title in (("whole_runs", "Whole runs"), ("ablation", "Table 2")):
        if key in metrics:
            seeds = ", ".join(str(s) for s in metrics[key]["seeds"])
            table += f"\n\n{title} (mean ± sample std over SEED {seeds}):\n"
            table += ablation_table(metrics[key])
    if "differences" in metrics:
        table += "\n\nPaired differences per seed:\n" + differences_table(metrics["differences"])
    with open(os.path.join(args.output, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table + f"\n\nwall time: {metrics['wall_seconds'] / 60:.1f} min\n")
    print("\nViL-Seg on synthetic_sem_seg_val (trained on captions only):\n" + table)
    print(
        "\nEach row's inference is in the config named in metrics.json, e.g. evaluate the first "
        "again with:\n"
        f"  tools/train_net.py --config-file {metrics['ViL-Seg']['online']['config']} --eval-only"
    )
    # The reference is the recipe of configs/vilseg_tiny.yaml: another config or override (but
    # SEED) is another recipe.
    same_recipe = os.path.abspath(args.config_file) == os.path.abspath(DEFAULT_CONFIG) and all(
        key == "SEED" for key in args.opts[::2]
    )
    where = placement(metrics["ViL-Seg"]) if same_recipe else ""
    if where:
        print("\n" + where)
    print(
        f"\nwall time {metrics['wall_seconds'] / 60:.1f} min; metrics, table and pictures in "
        f"{args.output}"
    )
    return metrics


if __name__ == "__main__":
    run_tool(main)
