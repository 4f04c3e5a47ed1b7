#!/usr/bin/env python
"""Train or evaluate ViL-Seg (Detectron2's train_net idiom).

    tools/train_net.py --config-file configs/vilseg_vitb16.yaml --num-gpus 8
    tools/train_net.py --config-file configs/eval/vilseg_vitb16_voc_unseen.yaml --eval-only \\
        MODEL.WEIGHTS m.pth
    tools/train_net.py --config-file configs/baselines/clip_seg_vitb16_voc_unseen.yaml --eval-only
    tools/train_net.py --config-file configs/vilseg_tiny.yaml --resume MODEL.DEVICE cpu

Without CUDA, pass ``MODEL.DEVICE cpu`` (a config asking for CUDA on a machine without it is an
error, not a silent switch to the CPU); ``--num-gpus N`` then runs N CPU processes with the gloo
backend.

``--eval-only`` evaluates ``MODEL.WEIGHTS`` (or, with ``--resume``, the last checkpoint of
``OUTPUT_DIR``); without either, the pretrained open_clip towers of ``MODEL.OPEN_CLIP.PRETRAINED``
as built (the "CLIP + Seg" baseline of ``configs/baselines/``). A model that would be random
(neither, and ``PRETRAINED ""``) is an error.
"""

import json
import logging
import os
import sys

# vilseg_d2 first: it fills the registries and quiets third-party import warnings.
# isort: off
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vilseg_d2  # noqa: E402,F401

# isort: on

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vilseg_d2.config import get_vilseg_cfg  # noqa: E402
from vilseg_d2.data.datasets import register_pseudo_label_datasets_from_config  # noqa: E402
from vilseg_d2.engine import ViLSegTrainer, load_eval_weights  # noqa: E402
from vilseg_d2.errors import run_tool  # noqa: E402


def setup(args):
    cfg = get_vilseg_cfg(args.config_file, args.opts)
    cfg.freeze()
    register_pseudo_label_datasets_from_config(cfg)  # in every process, as launch starts them
    if (
        cfg.MODEL.DEVICE == "cpu"
    ):  # Detectron2's environment report would warn "No CUDA runtime is found"
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    default_setup(cfg, args)
    # The project's own log lines (data mapper, loader switches, skipped records), like Mask2Former.
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vilseg_d2")
    if cfg.MODEL.DEVICE == "cpu":
        logging.getLogger("detectron2").info("MODEL.DEVICE is cpu: running on CPU.")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = ViLSegTrainer.build_model(cfg)
        load_eval_weights(cfg, model, resume=args.resume)
        res = ViLSegTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
            path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
            with open(path, "w") as f:
                json.dump(res, f, indent=2)
            logging.getLogger("detectron2").info(f"Evaluation results written to {path}")
        return res
    trainer = ViLSegTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_main(argv=None):
    """Detectron2's command line (``default_argument_parser``), then ``main`` in each process."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    get_vilseg_cfg(args.config_file, args.opts)  # a bad key or device fails here, not in N workers
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    run_tool(launch_main)  # a user's mistake (missing file, no CUDA, bad key): one message
