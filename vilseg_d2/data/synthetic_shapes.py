"""The synthetic world's eight shapes: outlines in unit coordinates, rotation and scaling, and
exact rasterisation (no anti-aliasing, so an image and its mask never disagree)."""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["SHAPES", "rotated", "rasterize"]

_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision


def _regular_polygon(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # y down
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


def _star() -> np.ndarray:
    outer = _regular_polygon(5, 1.0)
    inner = _regular_polygon(5, 0.42, phase=-math.pi / 2 + math.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


_A = 0.3  # half-width of the cross's arms
_CROSS = np.array(
    [[-_A, -1], [_A, -1], [_A, -_A], [1, -_A], [1, _A], [_A, _A],
     [_A, 1], [-_A, 1], [-_A, _A], [-1, _A], [-1, -_A], [-_A, -_A]]
)  # fmt: skip
# Each shape: (outer outline, holes), in units where the span is 2 (from -1 to 1).
SHAPES = {
    "circle": (_regular_polygon(64), []),
    "square": (np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]]), []),
    "triangle": (_regular_polygon(3) + np.array([0.0, 0.25]), []),
    "star": (_star(), []),
    "hexagon": (_regular_polygon(6, phase=0.0), []),
    "cross": (_CROSS, []),
    "ring": (_regular_polygon(64), [_regular_polygon(64, 0.55)]),
    "heart": (_heart(), []),
}


def rotated(points: np.ndarray, span: float, angle_deg: float) -> np.ndarray:
    """An outline of :data:`SHAPES` (N×2, span 2) scaled to ``span`` pixels and rotated by
    ``angle_deg`` degrees about its centre: N×2."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (points * (span / 2.0)) @ rot.T


def rasterize(outline: np.ndarray, holes: list[np.ndarray], center, size: int) -> np.ndarray:
    """Binary H×W mask (bool) of a polygon with holes, no anti-aliasing."""
    scale = 1 << _SUBPIXEL_BITS
    mask = np.zeros((size, size), np.uint8)

    def fixed(p):
        return np.round((p + np.asarray(center) - 0.5) * scale).astype(np.int32)

    cv2.fillPoly(mask, [fixed(outline)], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    for hole in holes:
        cv2.fillPoly(mask, [fixed(hole)], 0, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask.astype(bool)
