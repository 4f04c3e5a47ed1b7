"""Pixel-adaptive mask refinement (PAMR): label maps snapped to the image's edges at inference.

PAMR (Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels", CVPR 2020) is
the refinement TCL (Cha et al., CVPR 2023) applies to its open-vocabulary masks; here with TCL's
steps and dilations, applied to the label map (one-hot votes) rather than soft masks. ViL-Seg's maps
come from a coarse token grid (one token per patch); a token on an object's edge carries the
object, and the upsampled map spills over the background around it. PAMR repeatedly replaces each
pixel's class scores by an average of its neighbours' (3 x 3 neighbours at several dilations),
weighted by how alike their colours are, so labels spread within a colour region and stop at edges.

It is post-processing of the class maps, with no parameters and no training; ``MODEL.VILSEG.
REFINE_ITERS`` = 0 (the default, and the paper) leaves it out.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["check_dilations", "check_refinement_config", "local_affinity", "refine_masks"]


def check_dilations(dilations: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``dilations`` is a non-empty sequence of positive pixel
    counts."""
    if not dilations or min(dilations) < 1:
        raise ValueError(
            f"Refinement dilations must be positive pixel counts, got {tuple(dilations)}."
        )


def check_refinement_config(iterations: int, dilations: Sequence[int]) -> None:
    """Raise ``ValueError``, naming ``MODEL.VILSEG.REFINE_ITERS`` / ``REFINE_DILATIONS``, unless
    ``iterations`` >= 0 and :func:`check_dilations` accepts ``dilations``."""
    if iterations < 0:
        raise ValueError(f"MODEL.VILSEG.REFINE_ITERS must be >= 0, got {iterations}.")
    try:
        check_dilations(dilations)
    except ValueError as e:
        raise ValueError(f"MODEL.VILSEG.REFINE_DILATIONS: {e}") from None


def _offsets(dilations: Sequence[int]) -> List[Tuple[int, int]]:
    """The 8 neighbours (dy, dx) around a pixel at each dilation, row-major per dilation."""
    check_dilations(dilations)
    return [(dy, dx) for d in dilations for dy in (-d, 0, d) for dx in (-d, 0, d) if dy or dx]


def _neighbours(x: torch.Tensor, offsets: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
    """Views of ``x`` (C x H x W) whose pixel (y, x) is pixel (y + dy, x + dx), out-of-image
    pixels repeating the border; one per offset."""
    H, W = x.shape[-2:]
    m = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x[None], (m, m, m, m), mode="replicate")[0]
    return [padded[:, m + dy : m + dy + H, m + dx : m + dx + W] for dy, dx in offsets]


def local_affinity(
    image: torch.Tensor, *, dilations: Sequence[int], sigma: float = 0.1
) -> torch.Tensor:
    """Colour affinity of each pixel to its neighbours (the 8 around it at each dilation).

    The affinity logit of pixel i to neighbour j is ``-mean_c |I_ci - I_cj| / (sigma * s_ci)``,
    where ``s_ci`` is the standard deviation of channel c over i's neighbours: distances are
    measured against the local contrast, so a textured background and a flat object are both
    judged by what is usual around them. A softmax over the neighbours makes the weights.

    Args:
        image: 3 x H x W (any per-channel affine normalisation gives the same affinities).
        dilations: neighbourhood dilations in pixels, e.g. (1, 2, 4, 8, 12, 24).
        sigma: temperature relative to the local standard deviation.

    Returns:
        N x H x W weights, N = 8 * len(dilations): for each dilation d, the neighbours (dy, dx) in
        {-d, 0, d}^2 without (0, 0), row-major; out-of-image neighbours repeat the border pixel.
        They sum to 1 over N.

    Raises:
        ValueError: ``image`` is not C x H x W, or a dilation is not a positive pixel count.
    """
    if image.dim() != 3:
        raise ValueError(
            f"local_affinity expects a C x H x W image, got shape {tuple(image.shape)}."
        )
    image = image.float()
    neighbours = _neighbours(image, _offsets(dilations))
    n = len(neighbours)
    mean = sum(neighbours) / n
    std = (sum((x - mean).square() for x in neighbours) / (n - 1)).sqrt()  # C x H x W
    scale = sigma * std + 1e-8
    logits = torch.stack([-((x - image).abs() / scale).mean(0) for x in neighbours])  # N x H x W
    return logits.softmax(0)


def refine_masks(
    image: torch.Tensor,
    masks: torch.Tensor,
    *,
    iterations: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    affinity: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Refine class maps by propagating them along the image's colour affinities.

    Args:
        image: 3 x H x W image (normalised or not).
        masks: K x H x W class scores. Their per-pixel argmax is what gets propagated (as one-hot
            votes): the background rule gives a fixed score that the class probabilities of an
            object region may exceed by very little, and averaging those would hand objects to
            the background.
        iterations: propagation steps; 0 returns the one-hot argmax maps.
        dilations: see :func:`local_affinity`.
        affinity: ``local_affinity(image, dilations=dilations)`` when the caller already has it
            (e.g. refining the same image again), N x H x W with N = 8 * len(dilations). Only
            its shape is checked: it must have been computed with these dilations.

    Returns:
        K x H x W class vote shares (sum 1 per pixel). A class absent from the argmax map stays 0:
        only the classes present are propagated, which keeps large vocabularies cheap.

    Raises:
        ValueError: masks not K x H x W of the image's size, negative ``iterations``, a
            dilation that is not a positive pixel count, or an ``affinity`` of another shape.

    Memory: 8 * len(dilations) + 1 maps of H x W floats for the affinity, and 2 of P x H x W for
    the votes (P = classes present): about 0.4 GB at 2048 x 1024 with the default dilations.
    """
    if iterations < 0:
        raise ValueError(f"Refinement iterations must be >= 0, got {iterations}.")
    if masks.dim() != 3 or masks.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            "refine_masks expects K x H x W masks of the image's size "
            f"{tuple(image.shape[-2:])}, got {tuple(masks.shape)}."
        )
    offsets = _offsets(dilations)
    if affinity is not None and tuple(affinity.shape) != (len(offsets), *masks.shape[1:]):
        raise ValueError(
            f"refine_masks expects an affinity of shape {(len(offsets), *masks.shape[1:])} "
            f"(8 neighbours per dilation, the masks' size), got {tuple(affinity.shape)}."
        )
    labels = masks.argmax(0)  # H x W
    present = labels.unique()  # P
    votes = (labels[None] == present[:, None, None]).float()  # P x H x W
    if iterations > 0 and affinity is None:
        affinity = local_affinity(image, dilations=dilations)  # N x H x W
    votes = _propagate(votes, affinity, offsets, iterations).flatten(1)  # P x HW
    # Back to the K classes by a scatter, which a traced graph (ONNX, TorchScript), whose P is
    # only known when it runs, takes as one operator.
    K, H, W = masks.shape
    index = present[:, None].expand(-1, votes.shape[1])
    return votes.new_zeros(K, H * W).scatter_(0, index, votes).view(K, H, W)


def _propagate(
    votes: torch.Tensor,
    affinity: Optional[torch.Tensor],
    offsets: Sequence[Tuple[int, int]],
    iterations: int,
) -> torch.Tensor:
    """``iterations`` steps of PAMR: each pixel's P x H x W votes replaced by its neighbours'
    (``offsets``), weighted by the N x H x W ``affinity`` (None when ``iterations`` is 0)."""
    for _ in range(iterations):
        out = torch.zeros_like(votes)
        for weight, neighbour in zip(affinity, _neighbours(votes, offsets)):
            out.addcmul_(neighbour, weight)
        votes = out
    return votes
