"""Per-image K-means on pixel embeddings: the offline-clustering baseline of the paper's Table 2."""

from __future__ import annotations

import torch

__all__ = ["kmeans"]


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
