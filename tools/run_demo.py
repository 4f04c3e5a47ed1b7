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
4. with ``--ablation``, the paper's Table 2 with error bars: ViL-Seg (online), without L_vision
   (online) and without the clustering head (L_cluster off; K-means), each trained ``--seeds``
   times (SEED 1, 2, ...) from the model's own end of the L_cross phase (the weights of its
   checkpoint at iteration ``AUX_WARMUP_ITERS[0] - 1``, a fresh optimizer): the seeds vary only
   the phase with all three objectives. Mean and sample standard deviation over the seeds;
5. writes ``metrics.json``, ``results.md`` and overlay pictures to ``--output`` and prints the
   table.
"""

import argparse
import itertools
import json
import logging
import os
import sys
import time

# vilseg_d2 first: it fills the registries and quiets third-party import warnings.
# isort: off
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import vilseg_d2  # noqa: E402,F401

# isort: on

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import hooks
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from PIL import Image

from vilseg_d2.config import get_vilseg_cfg  # noqa: E402
from vilseg_d2.data import generate_synthetic_world, register_synthetic_world  # noqa: E402
from vilseg_d2.engine import ViLSegCheckpointer, ViLSegTrainer, cpu_has_native  # noqa: E402
from vilseg_d2.modeling.reuse import reuse_image_features  # noqa: E402
from vilseg_d2.visualization import segmentation_panels  # noqa: E402

logger = logging.getLogger("vilseg_demo")
MODES = ("online", "kmeans", "dense")
# The background rules tried on the held-out world (BG_THRESHOLD, BG_GLOBAL_SIMILARITY).
BACKGROUND_GRID = list(itertools.product((0.9, 0.95, 0.98, 0.995), (0.0, 0.6, 0.7, 0.8)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/demo")
    p.add_argument(
        "--data", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic")
    )
    p.add_argument("--config-file", default=os.path.join(ROOT, "configs", "vilseg_tiny.yaml"))
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also the paper's Table 2: ViL-Seg, w/o L_vision and w/o clustering head over seeds",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per --ablation column")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="training autocast; auto: bf16 where the CPU computes it natively (AVX512 "
                        "and newer), else fp32 (emulated bf16 is far slower)")  # fmt: skip
    p.add_argument("--pictures", type=int, default=8, help="validation images to draw")
    p.add_argument("--calibration-images", type=int, default=200,
                   help="images of the held-out world on which the background rules are chosen "
                        "per mode (captions never name the background as a thing); 0 keeps the "
                        "config's rules")  # fmt: skip
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


def training_precision(choice: str) -> str:
    """ "bf16" or "fp32" for ``--precision`` ``choice`` ("auto": bf16 if the CPU has it)."""
    if choice == "auto":
        choice = "bf16" if cpu_has_native(torch.bfloat16) else "fp32"
        logger.info(
            f"Training in {choice}: this CPU ({torch.backends.cpu.get_cpu_capability()}) "
            f"{'computes' if choice == 'bf16' else 'only emulates'} bf16."
        )
    return choice


def make_cfg(args, output_dir: str, extra=()):
    cfg = get_vilseg_cfg(
        args.config_file,
        [
            "MODEL.DEVICE",
            "cpu",
            "SOLVER.AMP.ENABLED",
            args.precision == "bf16",
            "SOLVER.AMP.DTYPE",
            "bf16",
            "OUTPUT_DIR",
            output_dir,
            "TEST.EVAL_PERIOD",
            0,
            *extra,
            *args.opts,
        ],
    )
    cfg.freeze()
    return cfg


def check_fits(model, path: str) -> None:
    """Raise if the checkpoint ``path`` was written for another configuration (tensors missing
    or of other shapes), where loading would drop them with a warning and go on."""
    saved = ViLSegCheckpointer(model)._torch_load(path)["model"]
    differ = [
        key
        for key, value in model.state_dict().items()
        if not key.endswith("num_batches_tracked")
        and (key not in saved or saved[key].shape != value.shape)
    ]
    if differ:
        raise RuntimeError(
            f"{path} was written by another configuration: {len(differ)} tensors are missing or "
            f"have other shapes (e.g. {differ[:3]}). Delete {os.path.dirname(path)} to train anew."
        )


def train(cfg, branch: str = ""):
    """Train (resuming an interrupted run; a new one begins at the checkpoint ``branch`` if
    given, with a fresh optimizer); returns the model and the wall time in s."""
    start = time.perf_counter()
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(final):
        logger.info(f"Reusing the trained model {final} (delete it to retrain).")
        model = ViLSegTrainer.build_model(cfg)
        check_fits(model, final)
        ViLSegCheckpointer(model).load(final)
        return model, 0.0
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)  # as train_net's default_setup does
    trainer = ViLSegTrainer(cfg)
    if trainer.checkpointer.has_checkpoint():
        check_fits(
            getattr(trainer.model, "module", trainer.model),
            trainer.checkpointer.get_checkpoint_file(),
        )
        trainer.resume_or_load(resume=True)
    elif branch:
        trainer.branch_from(branch)
    else:
        trainer.resume_or_load(resume=True)
    trainer._hooks = [
        h for h in trainer._hooks if not isinstance(h, hooks.EvalHook)
    ]  # evaluated below
    trainer.train()
    model = trainer.model
    return getattr(model, "module", model), time.perf_counter() - start


def write_eval_config(cfg, model, name: str) -> str:
    """Write ``<OUTPUT_DIR>/<name>.yaml``: the training config with the model's current inference
    (mode, refinement, background rules) and its final weights, so that
    ``tools/train_net.py --config-file <it> --eval-only`` evaluates the model as the demo did.
    Returns the path."""
    out = cfg.clone()
    out.defrost()
    out.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    out.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "eval", name)
    v = out.MODEL.VILSEG
    v.INFERENCE_MODE, v.REFINE_ITERS = model.inference_mode, model.refine_iters
    v.BG_THRESHOLD, v.BG_GLOBAL_SIMILARITY = model.bg_threshold, model.bg_global_similarity
    path = os.path.join(cfg.OUTPUT_DIR, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(out.dump())
    return path


def demo_runs(ablation: bool) -> dict:
    """{run name: (output subfolder, config overrides, inference modes)}: the demo's model, or
    with ``ablation`` the columns of the paper's Table 2 (each in its inference)."""
    if not ablation:
        return {"ViL-Seg": ("train", (), MODES)}
    return {
        "ViL-Seg": ("vilseg", (), ("online",)),
        "ViL-Seg w/o L_vision": ("no_vision", ("MODEL.VILSEG.VISION_WEIGHT", 0.0), ("online",)),
        # "Offline (K-means)": the head replaced by K-means (the paper counts 0.08M fewer
        # parameters), so L_cluster never trains the encoder.
        "ViL-Seg w/o clustering head": (
            "no_cluster",
            ("MODEL.VILSEG.CLUSTER_WEIGHT", 0.0),
            ("kmeans",),
        ),
    }


def held_out_world(data_dir: str, count: int) -> list:
    """(image, mask) pairs of a second synthetic world (seed 1), generated next to ``data_dir``."""
    root = data_dir.rstrip("/") + "_heldout"
    meta_file = os.path.join(root, "meta.json")
    meta = {}
    if os.path.isfile(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
    if meta.get("seed") != 1 or meta.get("num_val", 0) < count:
        generate_synthetic_world(root, num_train=0, num_val=count, seed=1)
    pairs = []
    for name in sorted(os.listdir(os.path.join(root, "val", "images")))[:count]:
        image = np.asarray(Image.open(os.path.join(root, "val", "images", name)).convert("RGB"))
        mask = np.asarray(Image.open(os.path.join(root, "val", "masks", name))).astype(np.int64)
        pairs.append((torch.from_numpy(image.transpose(2, 0, 1).copy()), mask))
    return pairs


def mean_iou(model, pairs, classes) -> float:
    """mIoU (%) of ``model`` on (image, mask) pairs; classes absent from both count as 0."""
    k = len(classes)
    hist = np.zeros((k, k))
    with torch.no_grad():
        for image, mask in pairs:
            pred = model([{"image": image, "vocabulary": classes}])[0]["sem_seg"].argmax(0).numpy()
            hist += np.bincount(k * mask.ravel() + pred.ravel(), minlength=k * k).reshape(k, k)
    iou = np.diag(hist) / np.maximum(hist.sum(0) + hist.sum(1) - np.diag(hist), 1)
    return 100.0 * float(iou.mean())


def calibrate_background(model, mode: str, pairs, classes) -> dict:
    """Set the model's background rules to the pair of BACKGROUND_GRID with the best mIoU on
    ``pairs`` in ``mode``; returns it with every score."""
    model.inference_mode = mode
    model.eval()
    scores = {}
    with reuse_image_features(model):  # the rules change only the scoring of each image's regions
        for threshold, similarity in BACKGROUND_GRID:
            model.bg_threshold, model.bg_global_similarity = threshold, similarity
            scores[(threshold, similarity)] = mean_iou(model, pairs, classes)
    (model.bg_threshold, model.bg_global_similarity), best = max(
        scores.items(), key=lambda kv: kv[1]
    )
    logger.info(
        f"{mode}: BG_THRESHOLD {model.bg_threshold}, "
        f"BG_GLOBAL_SIMILARITY {model.bg_global_similarity} "
        f"(held-out mIoU {best:.1f}; grid {min(scores.values()):.1f}-{best:.1f})"
    )
    return {"bg_threshold": model.bg_threshold, "bg_global_similarity": model.bg_global_similarity,
            "heldout_mIoU": best,
            "grid": {f"{t}/{g}": round(v, 2) for (t, g), v in scores.items()}}  # fmt: skip


def evaluate(cfg, model, mode: str) -> dict:
    model.inference_mode = mode
    start = time.perf_counter()
    res = ViLSegTrainer.test(cfg, model)["sem_seg"]
    res["seconds"] = time.perf_counter() - start
    return res


def draw_pictures(cfg, model, out_dir: str, count: int) -> None:
    """Input | ground truth | online prediction | clusters of the first ``count`` validation
    images."""
    os.makedirs(out_dir, exist_ok=True)
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    model.inference_mode = "online"
    model.eval()
    for record in DatasetCatalog.get(name)[:count]:
        rgb = np.asarray(Image.open(record["file_name"]).convert("RGB"))
        gt = np.asarray(Image.open(record["sem_seg_file_name"]))
        with torch.no_grad():
            out = model(
                [
                    {
                        "image": torch.from_numpy(rgb.transpose(2, 0, 1).copy()),
                        "vocabulary": meta.stuff_classes,
                    }
                ]
            )[0]
        picture = segmentation_panels(
            rgb, out["sem_seg"].argmax(0).numpy(), out["clusters"].numpy(), meta, truth=gt
        )
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        Image.fromarray(picture).save(os.path.join(out_dir, f"{stem}_image_gt_online_clusters.png"))


def evaluate_rows(cfg, model, modes, held_out, classes) -> dict:
    """Evaluate ``model`` in each of ``modes``, with the config's mask refinement and, when it
    has one, without (the paper's inference), each with the background rules that scored best on
    ``held_out`` (None: the config's). Writes each row's ``eval_<row>.yaml`` and the first's
    ``config.yaml`` beside the model; returns {row: SemSegEvaluator results + "background",
    "refine_iters", "mode", "config"}."""
    refinements = (cfg.MODEL.VILSEG.REFINE_ITERS, 0) if cfg.MODEL.VILSEG.REFINE_ITERS else (0,)
    rows = {}
    for mode in modes:
        for iters in refinements:
            model.refine_iters = iters
            background = calibrate_background(model, mode, held_out, classes) if held_out else None
            result = evaluate(cfg, model, mode)
            row = mode if iters == refinements[0] else f"{mode}_unrefined"
            config = write_eval_config(cfg, model, f"eval_{row}")
            if row == modes[0]:  # the model's own inference: config.yaml beside it
                config = write_eval_config(cfg, model, "config")
            result.update(background=background, refine_iters=iters, mode=mode, config=config)
            rows[row.replace("_", ", ")] = result
    first = next(iter(rows.values()))  # the model leaves with its own inference, as config.yaml
    model.inference_mode, model.refine_iters = first["mode"], first["refine_iters"]
    if first["background"]:
        model.bg_threshold = first["background"]["bg_threshold"]
        model.bg_global_similarity = first["background"]["bg_global_similarity"]
    return rows


def run_ablation(args, cfg, held_out, classes) -> dict:
    """The paper's Table 2 over ``args.seeds`` seeds: every column and seed begins at the
    checkpoint that ended ``cfg``'s L_cross phase (its weights and iteration, a fresh optimizer:
    the columns train different parameters) and trains the phase with all three objectives with
    its own SEED. Returns {"seeds", "start", column: {row: {"seeds": [results], metric +
    "_mean" / "_std"}}}."""
    start = os.path.join(
        cfg.OUTPUT_DIR, f"model_{cfg.MODEL.VILSEG.AUX_WARMUP_ITERS[0] - 1:07d}.pth"
    )
    if not os.path.isfile(start):
        raise FileNotFoundError(
            f"{start} is missing: the ablations begin at the model's checkpoint at the end of "
            "the L_cross phase (SOLVER.CHECKPOINT_PERIOD must divide AUX_WARMUP_ITERS[0])."
        )
    seeds = list(range(1, args.seeds + 1))
    out = {"seeds": seeds, "start": start}
    for column, (sub, extra, modes) in demo_runs(True).items():
        per_seed = []
        for seed in seeds:
            folder = os.path.join(args.output, "ablation", f"{sub}_seed{seed}")
            run_cfg = make_cfg(args, folder, (*extra, "SEED", seed))
            model, seconds = train(run_cfg, start)
            per_seed.append(evaluate_rows(run_cfg, model, modes, held_out, classes))
            logger.info(f"{column}, SEED {seed}: trained in {seconds / 60:.1f} min")
        out[column] = {}
        for row in per_seed[0]:
            results = [rows[row] for rows in per_seed]
            summary = {"seeds": results}
            for key in ("mIoU", "pACC", "mACC"):
                values = np.array([r[key] for r in results])
                summary[f"{key}_mean"] = float(values.mean())
                summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out[column][row] = summary
    return out


def ablation_table(ablation: dict) -> str:
    """Markdown: a row per Table 2 column and evaluated inference, mean ± std and each seed's
    mIoU (``ablation`` as :func:`run_ablation` returns it)."""
    rows = [
        "| model | inference | mask refinement | mIoU | pACC | mACC | mIoU per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for column, results in ablation.items():
        if column in ("seeds", "start"):
            continue
        for r in results.values():
            first = r["seeds"][0]
            refinement = f"PAMR, {first['refine_iters']} steps" if first["refine_iters"] else "none"
            cells = " | ".join(
                f"{r[k + '_mean']:.1f} ± {r[k + '_std']:.1f}" for k in ("mIoU", "pACC", "mACC")
            )
            seeds = ", ".join(f"{x['mIoU']:.1f}" for x in r["seeds"])
            rows.append(f"| {column} | {first['mode']} | {refinement} | {cells} | {seeds} |")
    return "\n".join(rows)


def results_table(metrics: dict, vilseg_cfg) -> str:
    """The demo's Markdown table: a row per model and evaluated inference (mode + refinement).

    Args:
        metrics: {run name: {"train_seconds": s, key: SemSegEvaluator results + "mode",
            "refine_iters", "background" (the calibration, or None: the config's rules)}}; other
            top-level entries (wall time, the ablation) are skipped.
        vilseg_cfg: ``cfg.MODEL.VILSEG``, for the rules of uncalibrated runs.
    """
    rows = [
        (
            "| model | inference | mask refinement | mIoU | pACC | mACC "
            "| background: BG_THRESHOLD / BG_GLOBAL_SIMILARITY |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for run_name, res in metrics.items():
        if not isinstance(res, dict) or "train_seconds" not in res:
            continue
        for r in res.values():
            if not isinstance(r, dict):
                continue
            bg = r["background"] or {
                "bg_threshold": vilseg_cfg.BG_THRESHOLD,
                "bg_global_similarity": vilseg_cfg.BG_GLOBAL_SIMILARITY,
            }
            refinement = f"PAMR, {r['refine_iters']} steps" if r["refine_iters"] else "none"
            rows.append(
                f"| {run_name} | {r['mode']} | {refinement} | {r['mIoU']:.1f} | {r['pACC']:.1f} "
                f"| {r['mACC']:.1f} | {bg['bg_threshold']} / {bg['bg_global_similarity']} |"
            )
    return "\n".join(rows)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    setup_logger(output=os.path.join(args.output, "demo_log.txt"))
    setup_logger(output=os.path.join(args.output, "demo_log.txt"), name="vilseg_d2")
    setup_logger(name="vilseg_demo")
    t0 = time.perf_counter()
    args.precision = training_precision(args.precision)
    ensure_world(args.data)

    classes = MetadataCatalog.get("synthetic_sem_seg_val").stuff_classes
    held_out = (
        held_out_world(args.data, args.calibration_images) if args.calibration_images > 0 else None
    )
    cfg = make_cfg(args, os.path.join(args.output, "train"))
    model, seconds = train(cfg)
    metrics = {"ViL-Seg": {"train_seconds": seconds}}
    metrics["ViL-Seg"].update(evaluate_rows(cfg, model, MODES, held_out, classes))
    draw_pictures(cfg, model, os.path.join(args.output, "pictures"), args.pictures)
    if args.ablation:
        metrics["ablation"] = run_ablation(args, cfg, held_out, classes)
    metrics["wall_seconds"] = time.perf_counter() - t0

    table = results_table(metrics, cfg.MODEL.VILSEG)
    if args.ablation:
        table += (
            "\n\nTable 2 (mean ± sample std over SEED "
            + ", ".join(str(s) for s in metrics["ablation"]["seeds"])
            + "):\n"
            + ablation_table(metrics["ablation"])
        )
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
    print(
        f"\nwall time {metrics['wall_seconds'] / 60:.1f} min; metrics, table and pictures in "
        f"{args.output}"
    )
    return metrics


if __name__ == "__main__":
    main()
