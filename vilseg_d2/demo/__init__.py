"""``make demo``'s steps (``tools/run_demo.py``): training runs, evaluation with background rules
chosen on a held-out world, the Table 2 ablations over seeds, and self-training."""

from .ablation import ablation_table, demo_runs, run_ablation
from .evaluation import (
    BACKGROUND_GRID,
    MODES,
    calibrate_background,
    draw_pictures,
    evaluate,
    evaluate_rows,
    held_out_world,
    mean_iou,
    results_table,
)
from .self_training import self_training
from .training import check_fits, make_cfg, train, training_precision, write_eval_config

__all__ = [
    "ablation_table",
    "demo_runs",
    "run_ablation",
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
