"""Detectron2 augmentations used by the ViL-Seg views: DINO-style random resized crop, the
random per-channel colour affine map of g(x), and random grayscale.

Both are :class:`detectron2.data.transforms.Augmentation` s returning Detectron2 / fvcore
transforms, so they compose with the rest of ``detectron2.data.transforms``. The crop and the
resize are one OpenCV call (:class:`CropResizeTransform`): about 8x faster than Detectron2's
PIL-based ``ResizeTransform`` after a ``CropTransform``, which matters with 7 views per image.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from detectron2.data.transforms import Augmentation, ColorTransform, NoOpTransform, Transform

__all__ = [
    "RandomResizedCrop",
    "CropResizeTransform",
    "RandomColorAffine",
    "ChannelAffine",
    "RandomGrayscale",
    "Grayscale",
]


class CropResizeTransform(Transform):
    """Crop the box (x0, y0, w, h) and resize it to (new_h, new_w), in one OpenCV call.

    Shrinking uses area interpolation (antialiased), enlarging bilinear.
    """

    def __init__(self, x0: int, y0: int, w: int, h: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        """
        Args:
            img: H×W or H×W×C array (uint8 or float).
            interp: an OpenCV interpolation flag overriding the default.

        Returns:
            new_h×new_w(×C) array of the same dtype.
        """
        crop = img[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]
        if interp is None:
            shrink = self.new_w * self.new_h < self.w * self.h
            interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        out = cv2.resize(crop, (self.new_w, self.new_h), interpolation=interp)
        if img.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel axis
            out = out[:, :, None]
        return out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = (coords[:, 0] - self.x0) * (self.new_w / self.w)
        coords[:, 1] = (coords[:, 1] - self.y0) * (self.new_h / self.h)
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=cv2.INTER_NEAREST)


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
        max_attempts: int = 10,
    ):
        """
        Args:
            size: output side, or (height, width).
            scale: range of the crop's area as a fraction of the image's area.
            ratio: range of the crop's width / height.
            max_attempts: random draws before the centred fallback.
        """
        super().__init__()
        if isinstance(size, int):
            size = (size, size)
        if not (0.0 < scale[0] <= scale[1] <= 1.0):
            raise ValueError(
                f"RandomResizedCrop scale must satisfy 0 < min <= max <= 1, got {scale}"
            )
        if not (0.0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedCrop ratio must satisfy 0 < min <= max, got {ratio}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> CropResizeTransform:
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
        return CropResizeTransform(int(x0), int(y0), cw, ch, out_h, out_w)


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


class Grayscale:
    """Luma (ITU-R 601 weights) copied to all three channels; a picklable callable for
    :class:`ColorTransform`.

    Args:
        image_format: "RGB" or "BGR", the channel order of the images it is applied to.
    """

    def __init__(self, image_format: str = "RGB"):
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        self.weights = weights[::-1].copy() if image_format == "BGR" else weights

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Grayscale expects an H×W×3 image, got {img.shape}")
        luma = np.clip(np.rint(img.astype(np.float32) @ self.weights), 0, 255).astype(img.dtype)
        return np.repeat(luma[:, :, None], 3, axis=2)


class RandomGrayscale(Augmentation):
    """With probability ``prob``, replace the image by its luma on all channels (DINO's views)."""

    def __init__(self, prob: float, image_format: str = "RGB"):
        """
        Args:
            prob: probability of the grayscale conversion.
            image_format: "RGB" or "BGR" (which channel gets which luma weight).
        """
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomGrayscale needs 0 <= prob <= 1, got {prob}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        if np.random.rand() < self.prob:
            return ColorTransform(Grayscale(self.image_format))
        return NoOpTransform()
