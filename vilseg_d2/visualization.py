"""Pictures of a segmentation: input | (ground truth) | prediction | clusters, side by side, drawn
with Detectron2's Visualizer at a size where class names fit."""

from __future__ import annotations

from typing import List, Optional

import numpy as np
from detectron2.data import Metadata
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["class_colors", "cluster_panel", "palette", "segmentation_panels"]

MIN_SIDE = 384  # images with a shorter side are enlarged (by a whole factor) before drawing


def palette() -> List[List[int]]:
    """Detectron2's colour map as 0-255 RGB integers: class k and cluster k are drawn in colour
    ``k % len(palette())``. An exported model carries it (``classes.json``) for the torch-free
    runtime."""
    return [[int(round(c)) for c in rgb] for rgb in colormap(rgb=True, maximum=255)]


def class_colors(num_classes: int) -> List[List[int]]:
    """The 0-255 RGB colours of K classes (Detectron2's ``stuff_colors``): the palette's in
    turn."""
    colors = palette()
    return [colors[k % len(colors)] for k in range(num_classes)]


def cluster_panel(rgb: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """The cluster map over the image, H x W x 3 uint8: one colour per cluster id, no names.

    Args:
        rgb: H x W x 3 uint8 image.
        clusters: H x W cluster ids (the model's ``"clusters"`` output).
    """
    colors = colormap(rgb=True, maximum=1)
    vis = Visualizer(rgb, None)
    for cluster in np.unique(clusters):
        # area_threshold=0: every component, however small (names would only cover the map).
        vis.draw_binary_mask(
            clusters == cluster, color=colors[cluster % len(colors)], alpha=0.8, area_threshold=0
        )
    return vis.get_output().get_image()


def segmentation_panels(
    rgb: np.ndarray,
    labels: np.ndarray,
    clusters: np.ndarray,
    metadata: Metadata,
    truth: Optional[np.ndarray] = None,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """Input | ground truth (if given) | prediction | clusters, one picture.

    Images whose shorter side is below ``min_side`` are enlarged by a whole factor (nearest
    neighbour, maps alike) before drawing, so that the class names fit.

    Args:
        rgb: H x W x 3 uint8 image.
        labels: H x W predicted class ids (indices into ``metadata.stuff_classes``).
        clusters: H x W cluster ids.
        metadata: with ``stuff_classes``.
        truth: H x W true class ids (255: unlabelled), or None.
        min_side: see above.

    Returns:
        (f*H) x (n*f*W) x 3 uint8, n = 3 or 4 panels.
    """
    factor = max(1, -(-min_side // min(rgb.shape[:2])))  # ceil

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)

    image = up(rgb)
    maps = [m for m in (truth, labels) if m is not None]
    overlays = [
        Visualizer(image, metadata, instance_mode=ColorMode.SEGMENTATION)
        .draw_sem_seg(up(m), alpha=0.6)
        .get_image()
        for m in maps
    ]
    return np.concatenate([image, *overlays, cluster_panel(image, up(clusters))], axis=1)
