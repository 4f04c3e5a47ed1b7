"""K-means on pixel embeddings: the offline-clustering baselines of the paper's Table 2, per
image (``kmeans``) or with centroids fit once on caption-training images (``kmeans_dataset``),
and the file those centroids are kept in."""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from ..errors import MissingFileError

__all__ = ["kmeans", "load_centroids", "save_centroids"]

CENTROIDS_FORMAT = "vilseg_d2.dataset_centroids.v1"


def kmeans(
    x: torch.Tensor, k: int, iters: int = 20, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's K-means with k-means++ initialisation, deterministic for a seed.

    Args:
        x: N x D points (fp32).
        k: number of clusters; if N < k, only N clusters are used.
        iters: Lloyd iterations (stops early when assignments no longer change).
        seed: seeds the k-means++ draws (a private generator: the global RNG is untouched).

    Returns:
        (assignments N long, centroids k x D). Centroids of empty clusters stay where they were.
    """
    x = x.float()
    n = x.shape[0]
    k_eff = min(k, n)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k_eff):
        weights = d2.clamp(min=0).cpu()
        idx = (
            int(torch.multinomial(weights, 1, generator=gen))
            if weights.sum() > 0
            else int(torch.randint(n, (1,), generator=gen))
        )
        centroids.append(x[idx])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    c = torch.stack(centroids)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k_eff).unsqueeze(1)
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        new_assign = torch.cdist(x, c).argmin(1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    if k_eff < k:
        c = torch.cat([c, c.new_zeros(k - k_eff, c.shape[1])])
    return assign, c


def save_centroids(path: str, centroids: torch.Tensor, **info) -> None:
    """Write dataset-level K-means centroids (C x D, unit-norm embedding space) and how they were
    fit (``info``: model weights, images, seed, ...) to ``path`` (a ``torch.save`` file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"format": CENTROIDS_FORMAT, "centroids": centroids.float().cpu(), **info}, path)


def load_centroids(path: str, num_clusters: int, dim: Optional[int] = None) -> Dict:
    """Read a file of :func:`save_centroids`, checked against the model.

    Args:
        path: the file (``MODEL.VILSEG.DATASET_CENTROIDS``).
        num_clusters: C the model's inference expects.
        dim: the embedding dimension D (None: not checked).

    Returns:
        the file's dict; ``"centroids"`` is C x D fp32.

    Raises:
        FileNotFoundError: no file (the message says how to make one).
        ValueError: not a centroids file, or C / D other than the model's.
    """
    if not path or not os.path.isfile(path):
        raise MissingFileError(
            f"MODEL.VILSEG.DATASET_CENTROIDS={path!r}: no such file. INFERENCE_MODE "
            "'kmeans_dataset' needs centroids fit on caption-training images: run "
            "tools/fit_centroids.py --config-file <config> --output centroids.pth "
            "MODEL.WEIGHTS <model.pth>, then pass MODEL.VILSEG.DATASET_CENTROIDS centroids.pth."
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != CENTROIDS_FORMAT:
        raise ValueError(f"{path} is not a centroids file written by tools/fit_centroids.py.")
    c = saved["centroids"]
    if c.dim() != 2 or c.shape[0] != num_clusters or (dim is not None and c.shape[1] != dim):
        raise ValueError(
            f"{path} holds {tuple(c.shape)} centroids; this model needs {num_clusters} x "
            f"{dim or 'D'} "
            "(MODEL.VILSEG.NUM_CLUSTERS x the embedding dimension). Fit them again for it."
        )
    return saved
