"""The demo's evaluation: background rules chosen on a held-out synthetic world, each model
evaluated in its inference modes with SemSegEvaluator, the table, and the pictures."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..data import generate_synthetic_world
from ..engine import ViLSegTrainer
from ..engine.centroids import write_dataset_centroids
from ..modeling.kmeans import load_centroids
from ..modeling.reuse import reuse_image_features
from ..visualization import segmentation_panels
from .training import write_eval_config

logger = logging.getLogger("vilseg_demo")
MODES = ("online", "kmeans", "dense")
CENTROIDS_FILE = "centroids.pth"  # beside the model: the "kmeans_dataset" rows' centroids
# The background rules tried on the held-out world (BG_THRESHOLD, BG_GLOBAL_SIMILARITY).
BACKGROUND_GRID = list(itertools.product((0.9, 0.95, 0.98, 0.995), (0.0, 0.6, 0.7, 0.8)))
STUDENT = "student: SemSegFPNHead"


@contextlib.contextmanager
def one_thread():
    """Run the block on one torch thread. The demo segments 128 x 128 images one by one, whose
    many small operators gain nothing from a second thread and lose much when it has to be woken
    or the other core is busy: the K-means rule choice on 60 held-out images took 11 s on one
    thread, 13 s on two with sleeping OpenMP threads, 123 s on two with spinning ones while a
    second process ran (docs/benchmarks.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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


def evaluate(cfg, model, mode) -> dict:
    """SemSegEvaluator's results on ``DATASETS.TEST`` with ``model`` in ``mode`` (None: a
    model without modes), plus the seconds it took."""
    if mode is not None:
        model.inference_mode = mode
    start = time.perf_counter()
    res = ViLSegTrainer.test(cfg, model)["sem_seg"]
    res["seconds"] = time.perf_counter() - start
    return res


def fit_centroids(cfg, model) -> str:
    """Give ``model`` the centroids of dataset-level K-means ("kmeans_dataset"), fit as
    ``tools/fit_centroids.py`` does (``MODEL.VILSEG.CENTROID_IMAGES`` caption-training images,
    never the evaluation images) into ``<OUTPUT_DIR>/centroids.pth``; a file newer than the
    model's final weights is reused. Returns its path."""
    path = os.path.join(cfg.OUTPUT_DIR, CENTROIDS_FILE)
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(final):
        with one_thread():
            write_dataset_centroids(cfg, model, path, weights=final)
    model.segmenter.dataset_centroids = load_centroids(path, model.num_clusters)["centroids"].to(
        model.device
    )
    return path


def evaluate_rows(cfg, model, modes, held_out, classes) -> dict:
    """Evaluate ``model`` in each of ``modes``, with the config's mask refinement and, when it
    has one, without (the paper's inference), each with the background rules that scored best on
    ``held_out`` (None: the config's). "kmeans_dataset" first fits its centroids
    (:func:`fit_centroids`). Writes each row's ``eval_<row>.yaml`` and the first's
    ``config.yaml`` beside the model; returns {row: SemSegEvaluator results + "background",
    "refine_iters", "mode", "config"}."""
    refinements = (cfg.MODEL.VILSEG.REFINE_ITERS, 0) if cfg.MODEL.VILSEG.REFINE_ITERS else (0,)
    rows = {}
    centroids = ""
    for mode in modes:
        if mode == "kmeans_dataset":
            centroids = fit_centroids(cfg, model)
        for iters in refinements:
            model.refine_iters = iters
            with one_thread():
                background = (
                    calibrate_background(model, mode, held_out, classes) if held_out else None
                )
                result = evaluate(cfg, model, mode)
            refined = iters == refinements[0]
            name = f"eval_{mode}" if refined else f"eval_{mode}_unrefined"
            config = write_eval_config(cfg, model, name, centroids)
            if refined and mode == modes[0]:  # the model's own inference: config.yaml beside it
                config = write_eval_config(cfg, model, "config", centroids)
            result.update(background=background, refine_iters=iters, mode=mode, config=config)
            rows[mode if refined else f"{mode}, unrefined"] = result
    first = next(iter(rows.values()))  # the model leaves with its own inference, as config.yaml
    model.inference_mode, model.refine_iters = first["mode"], first["refine_iters"]
    if first["background"]:
        model.bg_threshold = first["background"]["bg_threshold"]
        model.bg_global_similarity = first["background"]["bg_global_similarity"]
    return rows


def draw_pictures(cfg, model, out_dir: str, count: int) -> None:
    """Input | ground truth | online prediction | clusters of the first ``count`` validation
    images."""
    os.makedirs(out_dir, exist_ok=True)
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    model.inference_mode = "online"
    model.eval()
    with one_thread():
        _draw(model, DatasetCatalog.get(name)[:count], meta, out_dir)


def _draw(model, records, meta, out_dir: str) -> None:
    for record in records:
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
            rules = f"{bg['bg_threshold']} / {bg['bg_global_similarity']}"
            if r["mode"] == STUDENT:
                rules = "- (a class it learned)"
            refinement = f"PAMR, {r['refine_iters']} steps" if r["refine_iters"] else "none"
            rows.append(
                f"| {run_name} | {r['mode']} | {refinement} | {r['mIoU']:.1f} | {r['pACC']:.1f} "
                f"| {r['mACC']:.1f} | {rules} |"
            )
    return "\n".join(rows)
