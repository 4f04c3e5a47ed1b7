#!/usr/bin/env python
"""`make demo`: ViL-Seg learns to segment the synthetic caption world from captions alone, on CPU.

1. generates the synthetic caption world (captions for training, masks only for evaluation)
   under ``--data`` unless it is already there;
2. trains the tiny ViL-Seg (configs/vilseg_tiny.yaml) on its captions (bf16 autocast; log with
   ETA; re-running resumes or reuses the finished model);
3. evaluates it on ``synthetic_sem_seg_val`` with SemSegEvaluator in the three inference modes
   (online = the paper, K-means, dense "CLIP + Seg");
4. with ``--ablation``, trains and evaluates the same model without L_vision;
5. writes ``metrics.json``, ``results.md`` and overlay pictures to ``--output`` and prints the table.
"""

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import hooks
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import vilseg_d2  # noqa: E402,F401
from vilseg_d2.config import get_vilseg_cfg  # noqa: E402
from vilseg_d2.data import generate_synthetic_world, register_synthetic_world  # noqa: E402
from vilseg_d2.engine import ViLSegCheckpointer, ViLSegTrainer  # noqa: E402

logger = logging.getLogger("vilseg_demo")
MODES = ("online", "kmeans", "dense")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/demo")
    p.add_argument("--data", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic"))
    p.add_argument("--config-file", default=os.path.join(ROOT, "configs", "vilseg_tiny.yaml"))
    p.add_argument("--ablation", action="store_true", help="also train and evaluate ViL-Seg without L_vision")
    p.add_argument("--pictures", type=int, default=8, help="validation images to draw")
    p.add_argument("--bg-threshold", type=float, default=0.995,
                   help="MODEL.VILSEG.BG_THRESHOLD for the evaluation: class 0 ('background') takes every pixel "
                        "whose best shape probability is below it (captions never name the background as a thing)")  # fmt: skip
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    return p.parse_args(argv)


def ensure_world(data_dir: str) -> None:
    meta = os.path.join(data_dir, "meta.json")
    if os.path.isfile(meta):
        logger.info(f"Using the synthetic world in {data_dir}.")
    else:
        logger.info(f"Generating the synthetic caption world in {data_dir} ...")
        generate_synthetic_world(data_dir)
    register_synthetic_world(data_dir)


def make_cfg(args, output_dir: str, extra=()):
    cfg = get_vilseg_cfg(args.config_file, ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE",
                                            "bf16", "OUTPUT_DIR", output_dir, "TEST.EVAL_PERIOD", 0,
                                            "MODEL.VILSEG.BG_THRESHOLD", args.bg_threshold, *extra, *args.opts])
    cfg.freeze()
    return cfg


def train(cfg):
    """Train (resuming an interrupted run); returns the model and the wall time in s."""
    start = time.perf_counter()
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(final):
        logger.info(f"Reusing the trained model {final} (delete it to retrain).")
        model = ViLSegTrainer.build_model(cfg)
        ViLSegCheckpointer(model).load(final)
        return model, 0.0
    trainer = ViLSegTrainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer._hooks = [h for h in trainer._hooks if not isinstance(h, hooks.EvalHook)]  # evaluated below
    trainer.train()
    model = trainer.model
    return getattr(model, "module", model), time.perf_counter() - start


def evaluate(cfg, model, mode: str) -> dict:
    model.inference_mode = mode
    start = time.perf_counter()
    res = ViLSegTrainer.test(cfg, model)["sem_seg"]
    res["seconds"] = time.perf_counter() - start
    return res


def draw_pictures(cfg, model, out_dir: str, count: int) -> None:
    os.makedirs(out_dir, exist_ok=True)
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    model.inference_mode = "online"
    model.eval()
    for record in DatasetCatalog.get(name)[:count]:
        rgb = np.asarray(Image.open(record["file_name"]).convert("RGB"))
        gt = np.asarray(Image.open(record["sem_seg_file_name"]))
        with torch.no_grad():
            out = model([{"image": torch.from_numpy(rgb.transpose(2, 0, 1).copy()), "vocabulary": meta.stuff_classes}])[0]
        pred = out["sem_seg"].argmax(0).numpy()
        panels = [rgb]
        for labels in (gt, pred):
            panels.append(Visualizer(rgb, meta, scale=1.0).draw_sem_seg(labels, alpha=0.6).get_image())
        clusters = out["clusters"].numpy()
        cmeta = MetadataCatalog.get("__vilseg_demo_clusters")
        cmeta.stuff_classes = [f"c{i}" for i in range(64)]
        panels.append(Visualizer(rgb, cmeta).draw_sem_seg(clusters, alpha=0.8, area_threshold=10**9).get_image())
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        Image.fromarray(np.concatenate(panels, axis=1)).resize((4 * 256, 256), Image.NEAREST).save(
            os.path.join(out_dir, f"{stem}_image_gt_online_clusters.png")
        )


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    setup_logger(output=os.path.join(args.output, "demo_log.txt"))
    setup_logger(name="vilseg_demo")
    t0 = time.perf_counter()
    ensure_world(args.data)

    runs = {"ViL-Seg": ()}
    if args.ablation:
        runs["ViL-Seg w/o L_vision"] = ("MODEL.VILSEG.VISION_WEIGHT", 0.0)
    metrics = {}
    for run_name, extra in runs.items():
        sub = "train" if not extra else "train_no_vision"
        cfg = make_cfg(args, os.path.join(args.output, sub), extra)
        model, seconds = train(cfg)
        metrics[run_name] = {"train_seconds": seconds}
        for mode in MODES if not extra else ("online",):
            metrics[run_name][mode] = evaluate(cfg, model, mode)
        if not extra:
            draw_pictures(cfg, model, os.path.join(args.output, "pictures"), args.pictures)
    metrics["wall_seconds"] = time.perf_counter() - t0

    rows = ["| model | inference | mIoU | pACC | mACC |", "|---|---|---|---|---|"]
    for run_name, res in metrics.items():
        if not isinstance(res, dict):
            continue
        for mode in MODES:
            if mode in res:
                r = res[mode]
                rows.append(f"| {run_name} | {mode} | {r['mIoU']:.1f} | {r['pACC']:.1f} | {r['mACC']:.1f} |")
    table = "\n".join(rows)
    with open(os.path.join(args.output, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table + f"\n\nwall time: {metrics['wall_seconds'] / 60:.1f} min\n")
    print("\nViL-Seg on synthetic_sem_seg_val (trained on captions only):\n" + table)
    print(f"\nwall time {metrics['wall_seconds'] / 60:.1f} min; metrics, table and pictures in {args.output}")
    return metrics


if __name__ == "__main__":
    main()
