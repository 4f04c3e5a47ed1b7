"""The demo's training runs: the config of a run, training that resumes (or branches from a
checkpoint), and the config that evaluates a trained model as the demo did."""

from __future__ import annotations

import logging
import os
import time

import torch
from detectron2.engine import hooks
from detectron2.utils.env import seed_all_rng

from ..config import get_vilseg_cfg
from ..engine import ViLSegCheckpointer, ViLSegTrainer, cpu_has_native

logger = logging.getLogger("vilseg_demo")


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


def write_eval_config(cfg, model, name: str, centroids: str = "") -> str:
    """Write ``<OUTPUT_DIR>/<name>.yaml``: the training config with the model's current inference
    (mode, refinement, background rules, and the ``centroids`` file of "kmeans_dataset") and its
    final weights, so that
    ``tools/train_net.py --config-file <it> --eval-only`` evaluates the model as the demo did.
    Returns the path."""
    out = cfg.clone()
    out.defrost()
    out.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    out.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "eval", name)
    v = out.MODEL.VILSEG
    v.INFERENCE_MODE, v.REFINE_ITERS = model.inference_mode, model.refine_iters
    v.BG_THRESHOLD, v.BG_GLOBAL_SIMILARITY = model.bg_threshold, model.bg_global_similarity
    if model.inference_mode == "kmeans_dataset":
        v.DATASET_CENTROIDS = centroids
    path = os.path.join(cfg.OUTPUT_DIR, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(out.dump())
    return path
