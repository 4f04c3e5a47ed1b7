"""Detectron2 augmentations used by the ViL-Seg views: DINO-style random resized crop and the
random per-channel colour affine map of g(x).

Both are :class:`detectron2.data.transforms.Augmentation` s returning ordinary Detectron2 /
fvcore transforms, so they compose with the rest of ``detectron2.data.transforms``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from detectron2.data.transforms import (
    Augmentation,
    ColorTransform,
    CropTransform,
    ResizeTransform,
    TransformList,
)
from PIL import Image

__all__ = ["RandomResizedCrop", "RandomColorAffine", "ChannelAffine"]


class RandomResizedCrop(Augmentation):
    """Crop a random area and aspect ratio of the image and resize it to a fixed size.

    The multi-crop views of DINO / SwAV: the crop's area is a uniform fraction ``scale`` of the
    image, its aspect ratio log-uniform in ``ratio``; after ``max_attempts`` failed draws it
    falls back to the largest centred crop of an allowed ratio.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        interp: int = Image.BILINEAR,
        max_attempts: int = 10,
    ):
        """
        Args:
            size: output side, or (height, width).
            scale: range of the crop's area as a fraction of the image's area.
            ratio: range of the crop's width / height.
            interp: PIL resampling filter (bilinear, antialiased when shrinking).
            max_attempts: random draws before the centred fallback.
        """
        super().__init__()
        if isinstance(size, int):
            size = (size, size)
        if not (0.0 < scale[0] <= scale[1] <= 1.0):
            raise ValueError(f"RandomResizedCrop scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not (0.0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedCrop ratio must satisfy 0 < min <= max, got {ratio}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> TransformList:
        h, w = image.shape[:2]
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(self.max_attempts):
            target_area = area * np.random.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(np.random.uniform(*log_ratio))
            cw = int(round(math.sqrt(target_area * aspect)))
            ch = int(round(math.sqrt(target_area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                x0 = np.random.randint(0, w - cw + 1)
                y0 = np.random.randint(0, h - ch + 1)
                break
        else:
            # Fallback: the largest centred crop whose ratio is in range.
            in_ratio = w / h
            if in_ratio < self.ratio[0]:
                cw, ch = w, int(round(w / self.ratio[0]))
            elif in_ratio > self.ratio[1]:
                cw, ch = int(round(h * self.ratio[1])), h
            else:
                cw, ch = w, h
            cw, ch = max(1, min(cw, w)), max(1, min(ch, h))
            x0, y0 = (w - cw) // 2, (h - ch) // 2
        out_h, out_w = self.size
        return TransformList(
            [
                CropTransform(int(x0), int(y0), cw, ch, orig_w=w, orig_h=h),
                ResizeTransform(ch, cw, out_h, out_w, self.interp),
            ]
        )


class ChannelAffine:
    """Per-channel ``clip(x * mul + add)`` on a uint8 H×W×C image, through a lookup table.

    A picklable callable for :class:`ColorTransform`.

    Args:
        mul: (C,) multiplicative factors.
        add: (C,) additive offsets, in pixel units (0..255 scale).
    """

    def __init__(self, mul: np.ndarray, add: np.ndarray):
        self.mul = np.asarray(mul, dtype=np.float64)
        self.add = np.asarray(add, dtype=np.float64)
        levels = np.arange(256, dtype=np.float64)[:, None]  # 256×1
        lut = np.clip(np.rint(levels * self.mul[None, :] + self.add[None, :]), 0, 255)
        self.lut = lut.astype(np.uint8)[None, :, :]  # 1×256×C, as cv2.LUT wants

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != self.lut.shape[2]:
            raise ValueError(
                f"ChannelAffine expects a uint8 H×W×{self.lut.shape[2]} image, got "
                f"{img.dtype} {img.shape}"
            )
        return cv2.LUT(np.ascontiguousarray(img), self.lut)


class RandomColorAffine(Augmentation):
    """The colour part of ViL-Seg's g(x): per channel, x * U(1-m, 1+m) + U(-a, a) * 255.

    The result is clipped to [0, 255]; geometry is unchanged.
    """

    def __init__(self, mul: float, add: float):
        """
        Args:
            mul: half-width m of the multiplicative factor's range.
            add: half-width a of the additive offset's range, as a fraction of 255.
        """
        super().__init__()
        if mul < 0 or add < 0:
            raise ValueError(f"RandomColorAffine needs mul >= 0 and add >= 0, got {mul}, {add}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> ColorTransform:
        c = 1 if image.ndim == 2 else image.shape[2]
        mul = np.random.uniform(1.0 - self.mul, 1.0 + self.mul, size=c)
        add = np.random.uniform(-self.add, self.add, size=c) * 255.0
        return ColorTransform(ChannelAffine(mul, add))
