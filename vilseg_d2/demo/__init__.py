"""``make demo``'s steps (``tools/run_demo.py``): training runs, evaluation with background rules
chosen on a held-out world, whole runs over seeds and the Table 2 ablations, the diagnosis of a
draw, and self-training."""

from .ablation import (
    ablation_table,
    demo_runs,
    differences_table,
    paired_differences,
    run_ablation,
    run_seeds,
    summarise,
    whole_runs,
)
from .diagnosis import diagnose
from .evaluation import (
    BACKGROUND_GRID,
    MODES,
    calibrate_background,
    draw_pictures,
    evaluate,
    evaluate_rows,
    fit_centroids,
    held_out_world,
    mean_iou,
    results_table,
)
from .reference import WHOLE_RUNS, placement
from .self_training import self_training
from .training import check_fits, make_cfg, train, training_precision, write_eval_config

__all__ = [
    "ablation_table",
    "demo_runs",
    "differences_table",
    "paired_differences",
    "run_ablation",
    "run_seeds",
    "summarise",
    "whole_runs",
    "diagnose",
    "fit_centroids",
    "WHOLE_RUNS",
    "placement",
    "BACKGROUND_GRID",
    "MODES",
    "calibrate_background",
    "draw_pictures",
    "evaluate",
    "evaluate_rows",
    "held_out_world",
    "mean_iou",
    "results_table",
    "self_training",
    "check_fits",
    "make_cfg",
    "train",
    "training_precision",
    "write_eval_config",
]
