"""The paper's Table 2 on the synthetic world, over seeds: ViL-Seg, without L_vision, without
the clustering head, each branching from the model's end of the L_cross phase."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from .evaluation import MODES, evaluate_rows
from .training import make_cfg, train

logger = logging.getLogger("vilseg_demo")


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


def run_ablation(args, cfg, held_out, classes) -> dict:
    """The paper's Table 2 over ``args.seeds`` seeds: every column and seed begins at the
    checkpoint that ended ``cfg``'s L_cross phase (its weights and iteration, a fresh optimizer:
    the columns train different parameters) and trains the phase with all three objectives with
    its own SEED. Seed by seed (every column of SEED 1, then of SEED 2, ...); each run writes
    its rows to ``results.json`` beside its model, and a run whose ``results.json`` matches its
    ``model_final.pth`` is not evaluated again, so an interrupted ablation loses at most the run
    in progress. Returns {"seeds", "start", column: {row: {"seeds": [results], metric + "_mean"
    / "_std"}}}."""
    start = os.path.join(
        cfg.OUTPUT_DIR, f"model_{cfg.MODEL.VILSEG.AUX_WARMUP_ITERS[0] - 1:07d}.pth"
    )
    if not os.path.isfile(start):
        raise FileNotFoundError(
            f"{start} is missing: the ablations begin at the model's checkpoint at the end of "
            "the L_cross phase (SOLVER.CHECKPOINT_PERIOD must divide AUX_WARMUP_ITERS[0])."
        )
    seeds = list(range(1, args.seeds + 1))
    runs = {column: [] for column in demo_runs(True)}
    for seed in seeds:
        for column, (sub, extra, modes) in demo_runs(True).items():
            folder = os.path.join(args.output, "ablation", f"{sub}_seed{seed}")
            run_cfg = make_cfg(args, folder, (*extra, "SEED", seed))
            runs[column].append(_run(run_cfg, start, modes, held_out, classes))
            logger.info(f"{column}, SEED {seed}: " + _summary(runs[column][-1]))
    out = {"seeds": seeds, "start": start}
    for column, per_seed in runs.items():
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


def _run(cfg, start: str, modes, held_out, classes) -> dict:
    """One column and seed: trained (or reused) and evaluated, or its recorded rows when
    ``results.json`` was written for the ``model_final.pth`` that is there now."""
    record = os.path.join(cfg.OUTPUT_DIR, "results.json")
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(record) and os.path.isfile(final):
        with open(record) as f:
            saved = json.load(f)
        if saved.get("model") == _fingerprint(final):
            logger.info(f"Recorded results of {final}: {record}")
            return saved["rows"]
    model, seconds = train(cfg, start)
    rows = evaluate_rows(cfg, model, modes, held_out, classes)
    for r in rows.values():
        r["train_seconds"] = seconds
    with open(record, "w") as f:
        json.dump({"model": _fingerprint(final), "rows": rows}, f, indent=2)
    return rows


def _fingerprint(path: str) -> list:
    """Size and modification time of a file: which model a record belongs to."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _summary(rows: dict) -> str:
    return ", ".join(f"{row} mIoU {r['mIoU']:.1f}" for row, r in rows.items())


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
