"""Decoding the images and captions of caption training records, strictly.

Everything a web-scraped record can get wrong ends in :class:`BadRecordError` with a short
reason, so that the caller can skip and count it; images in unusual formats (alpha, grayscale,
palette, 16-bit, CMYK, EXIF-rotated) are converted to RGB uint8 correctly.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .skip_tracker import BadRecordError

__all__ = ["decode_image", "validate_caption"]


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to an H×W×3 uint8 RGB array.

    Alpha is composited over white (what a viewer shows for a transparent web image);
    16-bit and 32-bit integer images are scaled from 0..65535 to 0..255, not clipped.
    """
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float32)
        # 16-bit data (PNG stores 16-bit grayscale as I;16 or I): scale to 8 bits.
        gray = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise BadRecordError("float image with non-finite values")
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        gray = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    # L, 1, CMYK, YCbCr, LAB, HSV, ...: PIL knows how.
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes | str, *, min_size: int = 0) -> np.ndarray:
    """Decode an image file or its bytes to RGB uint8.

    Args:
        data: encoded bytes (a shard member) or a file path.
        min_size: if > 0, JPEGs larger than needed are decoded at a reduced scale (PIL's
            ``draft``) keeping both sides >= ``min_size``; 0 decodes at full size.

    Returns:
        np.ndarray: H×W×3, uint8, RGB order, EXIF orientation applied.

    Raises:
        BadRecordError: missing or empty file, not an image, truncated or corrupt data.
    """
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BadRecordError("missing file") from None
        except OSError as e:
            raise BadRecordError(f"cannot read file: {e}") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadRecordError(f"image data is {type(data).__name__}, not bytes")
    if len(data) == 0:
        raise BadRecordError("empty image data (zero bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated images would pass as valid. "
            "Unset it to train on caption data."
        )
    try:
        img = Image.open(io.BytesIO(data))
        if min_size > 0 and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        img.load()
        img = ImageOps.exif_transpose(img)
        arr = _to_rgb_uint8(img)
    except BadRecordError:
        raise
    except UnidentifiedImageError:
        raise BadRecordError("not an image (unidentified format)") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise BadRecordError(f"corrupt or truncated image: {e}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise BadRecordError(f"unexpected decoded image shape {arr.shape}")
    return arr


def validate_caption(caption: object) -> str:
    """Return the caption as a stripped ``str``, or raise if it is unusable.

    Long captions are kept whole: the tokenizer truncates to its context length.

    Args:
        caption: ``str`` or UTF-8 ``bytes`` (a shard's ``.txt`` member).

    Raises:
        BadRecordError: not text, not UTF-8, containing NUL bytes, or empty/whitespace.
    """
    if isinstance(caption, (bytes, bytearray, memoryview)):
        try:
            caption = bytes(caption).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecordError("caption is not UTF-8 text (binary data)") from None
    if not isinstance(caption, str):
        raise BadRecordError(f"caption is {type(caption).__name__}, not text")
    if "\x00" in caption:
        raise BadRecordError("caption contains NUL bytes (binary data)")
    caption = caption.strip()
    if not caption:
        raise BadRecordError("empty caption")
    return caption
