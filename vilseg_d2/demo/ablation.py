"""Whole runs of the demo recipe over seeds, and the paper's Table 2 on the synthetic world:
ViL-Seg, without L_vision, without the clustering head, each branching from its seed's end of the
L_cross phase."""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List

import numpy as np

from .diagnosis import diagnose
from .evaluation import MODES, evaluate_rows
from .training import make_cfg, train

logger = logging.getLogger("vilseg_demo")
METRICS = ("mIoU", "pACC", "mACC")


def demo_runs(ablation: bool) -> dict:
    """{run name: (output subfolder, config overrides, inference modes)}: the demo's model, or
    with ``ablation`` the columns of the paper's Table 2 (each in its inference)."""
    if not ablation:
        return {"ViL-Seg": ("train", (), MODES)}
    return {
        "ViL-Seg": ("vilseg", (), ("online",)),
        "ViL-Seg w/o L_vision": ("no_vision", ("MODEL.VILSEG.VISION_WEIGHT", 0.0), ("online",)),
        # "Offline (K-means)": the head replaced by K-means (the paper counts 0.08M fewer
        # parameters), so L_cluster never trains the encoder; its clusters fit once on caption
        # images (the paper's reading) or per image.
        "ViL-Seg w/o clustering head": (
            "no_cluster",
            ("MODEL.VILSEG.CLUSTER_WEIGHT", 0.0),
            ("kmeans_dataset", "kmeans"),
        ),
    }


def run_seeds(args, cfg) -> List[int]:
    """The seeds of ``--seeds N``: the config's SEED and the N - 1 after it."""
    return [int(cfg.SEED) + i for i in range(args.seeds)]


def seed_output(args, cfg, seed: int) -> str:
    """Where the whole run of ``seed`` trains: the demo's own folder for the config's SEED."""
    if seed == cfg.SEED:
        return cfg.OUTPUT_DIR
    return os.path.join(args.output, "seeds", f"seed{seed}", "train")


def whole_runs(args, cfg, demo_record: Dict, held_out, classes) -> Dict:
    """The recipe trained from scratch once per seed of :func:`run_seeds` (all its iterations)
    and evaluated as the demo is; the config's SEED is the demo's own run (``demo_record``:
    {"rows", "diagnosis"}). Returns {"seeds", "ViL-Seg": {row: summary}, "diagnosis": [per
    seed]}, a summary as :func:`summarise` makes it."""
    seeds = run_seeds(args, cfg)
    records = []
    for seed in seeds:
        if seed == cfg.SEED:
            records.append(demo_record)
            continue
        run_cfg = make_cfg(args, seed_output(args, cfg, seed), ("SEED", seed))
        records.append(_run(run_cfg, "", MODES, held_out, classes, with_diagnosis=True))
        logger.info(f"Whole run, SEED {seed}: " + _summary(records[-1]["rows"]))
    return {
        "seeds": seeds,
        "ViL-Seg": summarise([r["rows"] for r in records]),
        "diagnosis": [r.get("diagnosis") for r in records],
    }


def run_ablation(args, cfg, held_out, classes) -> dict:
    """The paper's Table 2 over the seeds of :func:`run_seeds`: for each seed, every column
    begins at the checkpoint that ended that seed's L_cross phase in its whole run (its weights
    and iteration, a fresh optimizer: the columns train different parameters) and trains the
    phase with all three objectives with that SEED. Seed by seed; each run writes its rows to
    ``results.json`` beside its model, and a run whose ``results.json`` matches its
    ``model_final.pth`` is not evaluated again, so an interrupted ablation loses at most the run
    in progress. Call after :func:`whole_runs`. Returns {"seeds", "starts", column: {row:
    summary}}."""
    seeds = run_seeds(args, cfg)
    name = f"model_{cfg.MODEL.VILSEG.AUX_WARMUP_ITERS[0] - 1:07d}.pth"
    starts = [os.path.join(seed_output(args, cfg, seed), name) for seed in seeds]
    for start in starts:
        if not os.path.isfile(start):
            raise FileNotFoundError(
                f"{start} is missing: the ablations begin at the model's checkpoint at the end "
                "of the L_cross phase (SOLVER.CHECKPOINT_PERIOD must divide AUX_WARMUP_ITERS[0])."
            )
    runs: Dict[str, list] = {column: [] for column in demo_runs(True)}
    for seed, start in zip(seeds, starts):
        for column, (sub, extra, modes) in demo_runs(True).items():
            folder = os.path.join(args.output, "ablation", f"{sub}_seed{seed}")
            run_cfg = make_cfg(args, folder, (*extra, "SEED", seed))
            runs[column].append(_run(run_cfg, start, modes, held_out, classes)["rows"])
            logger.info(f"{column}, SEED {seed}: " + _summary(runs[column][-1]))
    out = {"seeds": seeds, "starts": starts}
    for column, per_seed in runs.items():
        out[column] = summarise(per_seed)
    return out


def summarise(per_seed: List[Dict]) -> Dict:
    """{row: {"seeds": [the row's results, a seed each], metric + "_mean" / "_std" (sample
    std)}} from a list of {row: results}, one per seed."""
    out = {}
    for row in per_seed[0]:
        results = [rows[row] for rows in per_seed]
        summary = {"seeds": results}
        for key in METRICS:
            values = np.array([r[key] for r in results])
            summary[f"{key}_mean"] = float(values.mean())
            summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[row] = summary
    return out


def paired_differences(ablation: Dict, spread: Dict) -> List[Dict]:
    """Each ablation row against ViL-Seg's online row of the same refinement, seed by seed.

    Args:
        ablation: as :func:`run_ablation` returns it.
        spread: the whole runs' {row: summary} (:func:`whole_runs`' "ViL-Seg").

    Returns:
        a dict per compared row: "column", "row", "differences" (mIoU, a seed each), "mean",
        "std", and "exceeds_spread": every seed's difference has the same sign and the mean's
        size exceeds the whole-run std of ViL-Seg's row (the draw-to-draw spread).
    """
    base = ablation["ViL-Seg"]
    out = []
    for column, rows in ablation.items():
        if column in ("seeds", "starts", "ViL-Seg"):
            continue
        for row, summary in rows.items():
            reference = "online, unrefined" if row.endswith("unrefined") else "online"
            diffs = np.array(
                [a["mIoU"] - b["mIoU"] for a, b in zip(summary["seeds"], base[reference]["seeds"])]
            )
            std = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0
            draw_std = spread.get(reference, {}).get("mIoU_std", 0.0)
            same_sign = bool(np.all(diffs > 0) or np.all(diffs < 0))
            out.append(
                {
                    "column": column,
                    "row": row,
                    "differences": diffs.tolist(),
                    "mean": float(diffs.mean()),
                    "std": std,
                    "exceeds_spread": same_sign and abs(float(diffs.mean())) > draw_std,
                }
            )
    return out


def _run(cfg, start: str, modes, held_out, classes, with_diagnosis: bool = False) -> dict:
    """One model trained (or reused) and evaluated: {"rows", "diagnosis" (if asked and a
    held-out world is given)}, or its record when ``results.json`` was written for the
    ``model_final.pth`` that is there now."""
    record = os.path.join(cfg.OUTPUT_DIR, "results.json")
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(record) and os.path.isfile(final):
        with open(record) as f:
            saved = json.load(f)
        if saved.get("model") == _fingerprint(final):
            logger.info(f"Recorded results of {final}: {record}")
            return saved
    model, seconds = train(cfg, start)
    rows = evaluate_rows(cfg, model, modes, held_out, classes)
    for r in rows.values():
        r["train_seconds"] = seconds
    saved = {"model": _fingerprint(final), "rows": rows}
    if with_diagnosis and held_out:
        saved["diagnosis"] = diagnose(cfg, model, held_out, classes)
    with open(record, "w") as f:
        json.dump(saved, f, indent=2)
    return saved


def _fingerprint(path: str) -> list:
    """Size and modification time of a file: which model a record belongs to."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _summary(rows: dict) -> str:
    return ", ".join(f"{row} mIoU {r['mIoU']:.1f}" for row, r in rows.items())


def ablation_table(ablation: dict) -> str:
    """Markdown: a row per column (of Table 2, or "ViL-Seg" of the whole runs) and evaluated
    inference, mean ± std and each seed's mIoU (``ablation`` as :func:`run_ablation` or
    :func:`whole_runs` returns it)."""
    rows = [
        "| model | inference | mask refinement | mIoU | pACC | mACC | mIoU per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for column, results in ablation.items():
        if column in ("seeds", "starts", "diagnosis"):
            continue
        for r in results.values():
            first = r["seeds"][0]
            refinement = f"PAMR, {first['refine_iters']} steps" if first["refine_iters"] else "none"
            cells = " | ".join(f"{r[k + '_mean']:.1f} ± {r[k + '_std']:.1f}" for k in METRICS)
            seeds = ", ".join(f"{x['mIoU']:.1f}" for x in r["seeds"])
            rows.append(f"| {column} | {first['mode']} | {refinement} | {cells} | {seeds} |")
    return "\n".join(rows)


def differences_table(differences: List[Dict]) -> str:
    """Markdown: :func:`paired_differences`, a row each."""
    rows = [
        "| model | inference | mIoU - ViL-Seg online (per seed) | mean ± std | beyond the spread |",
        "|---|---|---|---|---|",
    ]
    for d in differences:
        per_seed = ", ".join(f"{x:+.1f}" for x in d["differences"])
        rows.append(
            f"| {d['column']} | {d['row']} | {per_seed} | {d['mean']:+.1f} ± {d['std']:.1f} "
            f"| {'yes' if d['exceeds_spread'] else 'no'} |"
        )
    return "\n".join(rows)
