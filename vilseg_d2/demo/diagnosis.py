"""What decides a draw of the demo recipe: measurements of a trained model beside its mIoU.

Each is taken on the held-out world (never the reported split): how far L_cross got, how the
clusters of each inference use and split the image, and how much of the segmentation survives
when the colours are taken away (the captions name colours, a shortcut that can stand in for
the shapes).
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch

from .evaluation import mean_iou, one_thread

__all__ = ["loss_summary", "cluster_statistics", "grayscale", "diagnose"]

Pairs = Sequence[Tuple[torch.Tensor, np.ndarray]]


def loss_summary(output_dir: str, phase_end: int, window: int = 100) -> Dict[str, float]:
    """Mean logged losses over the last ``window`` iterations before ``phase_end`` (the end of
    the L_cross phase) and before the end of training, from Detectron2's ``metrics.json`` in
    ``output_dir`` (written every 20 iterations). In the L_cross phase the auxiliary losses are
    off (``aux_weight_factor`` 0) and ``total_loss`` is L_cross. Empty when the run wrote none."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if "iteration" in r and "total_loss" in r]
    if not records:
        return {}
    for r in records:
        if "loss_cross" not in r and r.get("aux_weight_factor", 1.0) == 0.0:
            r["loss_cross"] = r["total_loss"]
    out = {}
    last = max(r["iteration"] for r in records)
    for name, end in (("end_of_phase", phase_end), ("final", last + 1)):
        chosen = [r for r in records if end - window <= r["iteration"] < end]
        for key in ("loss_cross", "loss_vision", "loss_cluster"):
            values = [r[key] for r in chosen if key in r]
            if values:
                out[f"{key}_{name}"] = float(np.mean(values))
    return out


def cluster_statistics(model, mode: str, pairs: Pairs, classes: Sequence[str]) -> Dict[str, float]:
    """How ``mode``'s clusters split the held-out images.

    Returns:
        clusters_per_image: mean number of distinct cluster ids in an image's output.
        purity: share of the pixels whose cluster's majority true class is their own (pixel-
            weighted over all images; 1 = no cluster spans two classes).
        objects_per_image: mean number of distinct true classes (background included), for
            comparison.
        oracle_mIoU: mIoU (%) when each cluster takes its majority true class: what the clusters
            allow, if the text named every region right.
    """
    model.inference_mode = mode
    model.eval()
    used: List[int] = []
    objects: List[int] = []
    k = len(classes)
    hist = np.zeros((k, k))
    with torch.no_grad():
        for image, mask in pairs:
            clusters = model([{"image": image, "vocabulary": classes}])[0]["clusters"].numpy()
            ids = np.unique(clusters)
            used.append(len(ids))
            objects.append(len(np.unique(mask)))
            oracle = np.zeros_like(mask)
            for c in ids:
                inside = clusters == c
                oracle[inside] = np.bincount(mask[inside], minlength=k).argmax()
            hist += np.bincount(k * mask.ravel() + oracle.ravel(), minlength=k * k).reshape(k, k)
    union = np.maximum(hist.sum(0) + hist.sum(1) - np.diag(hist), 1)
    return {
        "clusters_per_image": float(np.mean(used)),
        "purity": float(np.diag(hist).sum() / max(hist.sum(), 1)),
        "objects_per_image": float(np.mean(objects)),
        "oracle_mIoU": 100.0 * float((np.diag(hist) / union).mean()),
    }


def grayscale(pairs: Pairs) -> List[Tuple[torch.Tensor, np.ndarray]]:
    """The pairs with each image in grey (ITU-R 601 luma, repeated over the 3 channels)."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    out = []
    for image, mask in pairs:
        grey = (image.float() * weights).sum(0, keepdim=True).round().clamp(0, 255)
        out.append((grey.to(image.dtype).expand(3, -1, -1).contiguous(), mask))
    return out


def diagnose(
    cfg, model, held_out: Pairs, classes: Sequence[str], modes: Iterable[str] = ("online", "kmeans")
) -> Dict:
    """The measurements above for a model trained with ``cfg`` (its OUTPUT_DIR holds the
    training's metrics), in its current inference settings for the mIoUs. The model leaves in the
    inference mode it came in."""
    own_mode = model.inference_mode
    out: Dict = {"losses": loss_summary(cfg.OUTPUT_DIR, int(cfg.MODEL.VILSEG.AUX_WARMUP_ITERS[0]))}
    with one_thread():
        for mode in modes:
            out[mode] = cluster_statistics(model, mode, held_out, classes)
        model.inference_mode = own_mode
        out["heldout_mIoU"] = mean_iou(model, held_out, classes)
        out["heldout_grayscale_mIoU"] = mean_iou(model, grayscale(held_out), classes)
    out["mode"] = own_mode
    return out
