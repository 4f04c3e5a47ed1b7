"""ViL-Seg + ST on the synthetic world: pseudo-labels from the demo's model, then Detectron2's
SemanticSegmentor trained on them (configs/self_training/synthetic_fpn.yaml)."""

from __future__ import annotations

import logging
import os
import time

from detectron2.data import DatasetCatalog
from tqdm import tqdm

from ..config import get_vilseg_cfg
from ..data.datasets import register_pseudo_label_datasets_from_config
from ..data.pseudo_labels import (
    image_stems,
    keep_most_confident,
    write_manifest,
    write_pseudo_labels,
)
from ..engine import ViLSegTrainer, eval_classes, eval_vocabulary, load_eval_weights
from .evaluation import STUDENT, evaluate
from .training import train

logger = logging.getLogger("vilseg_demo")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SELF_TRAINING_CONFIG = os.path.join(ROOT, "configs", "self_training", "synthetic_fpn.yaml")
PSEUDO_LABELS = "synthetic_pseudo_train"


def self_training(args, cfg) -> dict:
    """ViL-Seg + ST: the demo's model, with its own inference (``config.yaml`` beside it),
    pseudo-labels the first ``args.st_images`` images of ``DATASETS.TRAIN[0]`` (captions unused;
    not the validation images), keeping per class the ``args.st_keep`` most confident share; the
    student of :data:`SELF_TRAINING_CONFIG`, its encoder initialised from the model's, trains on
    them and is evaluated on ``DATASETS.TEST``.

    Returns:
        {"train_seconds": pseudo-labelling + the student's training, "student": its results
        (SemSegEvaluator's, plus the pseudo-label statistics), and, when the demo's config
        refines masks, "student, refined": the same student with that refinement}.
    """
    start = time.perf_counter()
    teacher_cfg = get_vilseg_cfg(os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
    teacher = ViLSegTrainer.build_model(teacher_cfg)
    load_eval_weights(teacher_cfg, teacher)
    teacher.eval()
    target = teacher_cfg.DATASETS.TEST[0]
    classes = eval_classes(teacher_cfg, target)
    files = [r["file_name"] for r in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])][: args.st_images]
    root = os.path.join(args.output, "pseudo_labels")
    stems = image_stems(files)
    write_pseudo_labels(
        teacher, files, eval_vocabulary(teacher_cfg, target), root,
        progress=lambda items, total: tqdm(items, total=total, desc="pseudo-labels"),
    )  # fmt: skip
    stats = keep_most_confident(root, stems, classes, args.st_keep)
    write_manifest(root, name=PSEUDO_LABELS, classes=classes, keep=args.st_keep,
                   source={"weights": teacher_cfg.MODEL.WEIGHTS, "inference": "config.yaml"},
                   stems=stems, images=files, statistics=stats)  # fmt: skip
    labelled = time.perf_counter() - start
    logger.info(
        f"Pseudo-labelled {len(files)} images in {labelled / 60:.1f} min; kept per class: "
        + ", ".join(f"{c} {100 * s['kept_share']:.0f}%" for c, s in stats.items())
    )
    st_cfg = get_vilseg_cfg(SELF_TRAINING_CONFIG, [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", teacher_cfg.MODEL.WEIGHTS,
        "DATASETS.TRAIN", (PSEUDO_LABELS,), "DATASETS.PSEUDO_LABEL_ROOTS", (root,),
        "SOLVER.AMP.ENABLED", args.precision == "bf16", "SOLVER.AMP.DTYPE", "bf16",
        "OUTPUT_DIR", os.path.join(args.output, "self_training"), "TEST.EVAL_PERIOD", 0,
        *args.st_opts,
    ])  # fmt: skip
    register_pseudo_label_datasets_from_config(st_cfg)
    student, seconds = train(st_cfg)
    pseudo_labels = {"images": len(files), "keep": args.st_keep, "seconds": labelled,
                     "statistics": stats}  # fmt: skip
    rows = {}
    if cfg.MODEL.VILSEG.REFINE_ITERS:  # as ViL-Seg's refined rows: PAMR on the student's output
        refined_cfg, config = student_eval_config(
            st_cfg, "eval_refined", cfg.MODEL.VILSEG.REFINE_ITERS
        )
        refined = ViLSegTrainer.build_model(refined_cfg)
        load_eval_weights(refined_cfg, refined)
        rows["student, refined"] = evaluate(refined_cfg, refined, None)
        rows["student, refined"].update(mode=STUDENT, refine_iters=refined.refine_iters,
                                        background=None, config=config)  # fmt: skip
    _, config = student_eval_config(st_cfg, "config")
    rows["student"] = evaluate(st_cfg, student, None)
    rows["student"].update(mode=STUDENT, refine_iters=0, background=None,
                           config=config, pseudo_labels=pseudo_labels)  # fmt: skip
    return {"train_seconds": labelled + seconds, **rows}


def student_eval_config(st_cfg, name: str, refine_iters: int = 0):
    """Write ``<OUTPUT_DIR>/<name>.yaml``: the student's config with its final weights, as
    Detectron2's stock ``SemanticSegmentor`` or, with ``refine_iters`` > 0, as the
    :class:`RefinedSemanticSegmentor` that refines its output (same weights). Returns the config
    and the path."""
    out = st_cfg.clone()
    out.defrost()
    out.MODEL.WEIGHTS = os.path.join(st_cfg.OUTPUT_DIR, "model_final.pth")
    if refine_iters:
        out.MODEL.META_ARCHITECTURE = "RefinedSemanticSegmentor"
    out.MODEL.VILSEG.REFINE_ITERS = refine_iters
    path = os.path.join(st_cfg.OUTPUT_DIR, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(out.dump())
    return out, path
