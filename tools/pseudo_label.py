#!/usr/bin/env python
"""Pseudo-label images with a trained ViL-Seg, for self-training ("ViL-Seg + ST").

The model (``--config-file`` and its ``MODEL.WEIGHTS``, with the config's inference mode, mask
refinement and background rules) labels the images of a registered dataset (``--dataset``: only
its images are read; captions and masks are unused) or of a folder (``--images``), choosing among
the classes of ``DATASETS.TEST[0]`` under ``TEST.VILSEG.VOCABULARY`` (as ``--eval-only`` does).
Per class, the ``--keep`` share of its pixels with the highest confidence keeps its label; the
rest become 255 (ignored). The output folder is a Detectron2 sem_seg dataset named ``--name``:
``DATASETS.PSEUDO_LABEL_ROOTS`` registers it (see configs/self_training/).

    tools/pseudo_label.py --config-file output/demo/train/config.yaml \\
        --dataset synthetic_captions_train --max-images 2000 --keep 0.5 \\
        --name synthetic_pseudo_train --output output/demo/pseudo_labels [--num-gpus 2]

Re-running the same command resumes: images already labelled are skipped. ``--num-gpus N``
splits the images over N processes (on CPU too, as ``tools/train_net.py``).
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

from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from vilseg_d2.config import get_vilseg_cfg
from vilseg_d2.data.datasets.register_sem_seg import DatasetNotRegisteredError
from vilseg_d2.data.pseudo_labels import (
    image_stems,
    keep_most_confident,
    write_manifest,
    write_pseudo_labels,
)
from vilseg_d2.engine import ViLSegTrainer, eval_classes, eval_vocabulary, load_eval_weights
from vilseg_d2.errors import MissingFileError, UserError, run_tool

logger = logging.getLogger("vilseg_d2.pseudo_label")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def parse_args(argv=None):
    p = default_argument_parser()
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a registered dataset whose image files to label")
    source.add_argument("--images", help="a folder of images to label")
    p.add_argument("--image-list", help="with --images: a file of image stems to take (one per "
                   "line, e.g. VOC's ImageSets/Segmentation/train.txt)")  # fmt: skip
    p.add_argument("--max-images", type=int, default=0, help="the first N images only (0: all)")
    p.add_argument("--keep", type=float, default=0.5,
                   help="share (0-1] of each class's pixels kept, the most confident")  # fmt: skip
    p.add_argument("--name", required=True, help="the dataset name of the pseudo-labels")
    p.add_argument("--output", required=True, help="the folder to write")
    return p.parse_args(argv)


def image_files(args) -> list:
    """The image paths to label, in a fixed order."""
    if args.dataset:
        if args.dataset not in DatasetCatalog:
            raise DatasetNotRegisteredError(
                f"--dataset {args.dataset} is not registered; the registered datasets are: "
                f"{', '.join(sorted(DatasetCatalog.list()))}. A folder of images: --images."
            )
        records = DatasetCatalog.get(args.dataset)
        files = [r.get("file_name") for r in records]
        if not all(isinstance(f, str) for f in files):
            raise UserError(
                f"{args.dataset} has records without an image file_name (e.g. webdataset "
                "shards); extract the images to a folder and pass --images."
            )
    else:
        if not os.path.isdir(args.images):
            raise MissingFileError(f"--images {args.images} is not a folder.")
        files = sorted(
            os.path.join(args.images, f)
            for f in os.listdir(args.images)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if args.image_list:
            if not os.path.isfile(args.image_list):
                raise MissingFileError(f"--image-list {args.image_list}: no such file.")
            with open(args.image_list) as f:
                wanted = {line.strip() for line in f if line.strip()}
            files = [f for f in files if os.path.splitext(os.path.basename(f))[0] in wanted]
    if args.max_images > 0:
        files = files[: args.max_images]
    if not files:
        raise UserError("No images to label: check --dataset / --images / --image-list.")
    return files


def main(args):
    cfg = get_vilseg_cfg(args.config_file, args.opts)
    cfg.freeze()
    setup_logger(distributed_rank=comm.get_rank())
    setup_logger(distributed_rank=comm.get_rank(), name="vilseg_d2")
    if not cfg.DATASETS.TEST:
        raise UserError("DATASETS.TEST[0] must name the dataset whose classes to label with.")
    target = cfg.DATASETS.TEST[0]
    classes, vocabulary = eval_classes(cfg, target), eval_vocabulary(cfg, target)
    files = image_files(args)  # a mistake in the image arguments stops before the model is built
    stems = image_stems(files)  # unique, or an error before any labelling
    model = ViLSegTrainer.build_model(cfg)
    load_eval_weights(cfg, model)
    model.eval()
    rank, world = comm.get_rank(), comm.get_world_size()

    def progress(items, total):
        return tqdm(items, total=total, desc="pseudo-labels", disable=rank != 0)

    done = write_pseudo_labels(
        model, files, vocabulary, args.output, rank=rank, world_size=world, progress=progress
    )
    logger.info(f"Labelled {done} images in this process ({len(files)} in all).")
    comm.synchronize()
    if comm.is_main_process():
        stats = keep_most_confident(args.output, stems, classes, args.keep)
        source = {"config": args.config_file, "weights": cfg.MODEL.WEIGHTS,
                  "inference_mode": cfg.MODEL.VILSEG.INFERENCE_MODE}  # fmt: skip
        write_manifest(args.output, name=args.name, classes=classes, keep=args.keep,
                       source=source, stems=stems, images=files,
                       statistics=stats)  # fmt: skip
        lines = [f"{c:>16}: {s['pixels']:>10} px, kept {100 * s['kept_share']:5.1f}% "
                 f"(confidence >= {s['threshold']:.3f})" for c, s in stats.items()]  # fmt: skip
        logger.info("Pseudo-labels per class:\n" + "\n".join(lines))
        logger.info(
            f"Wrote {args.name} to {args.output}; train on it with DATASETS.TRAIN "
            f"'(\"{args.name}\",)' DATASETS.PSEUDO_LABEL_ROOTS '(\"{args.output}\",)'."
        )
    comm.synchronize()
    with open(os.path.join(args.output, "dataset.json")) as f:
        return json.load(f)


def launch_main(argv=None):
    """The command line, then ``main`` in each process (``--num-gpus``)."""
    args = parse_args(argv)
    get_vilseg_cfg(args.config_file, args.opts)  # a bad key or device fails here, not in N workers
    return launch(
        main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,)
    )


if __name__ == "__main__":
    run_tool(launch_main)  # a user's mistake (missing file, no CUDA, bad key): one message
