"""What a web request brings, checked before the model sees it: the uploaded image (any file a
browser or an API client sends) and the vocabulary text. Every mistake is a
:class:`~vilseg_d2.errors.UserError` whose message the page shows.
"""

from __future__ import annotations

import io
import re
import unicodedata
import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T
from PIL import Image

from ..data.image_io import decode_image
from ..data.skip_tracker import BadRecordError
from ..engine.vocabulary_args import vocabulary_from_text
from ..errors import UserError

__all__ = ["InputLimits", "read_image", "read_vocabulary"]

IMAGE_FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"


@dataclass(frozen=True)
class InputLimits:
    """What one request may ask for; the page states them.

    Attributes:
        max_bytes: the largest upload, in bytes (the server refuses larger ones before they
            arrive; this is checked again on the file).
        max_pixels: the largest image read, in pixels, checked on the file's header before
            decoding (so a small file that decodes to gigabytes is refused).
        max_side: images with a longer side are downscaled to the size the model reads (the
            config's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) before segmenting and drawing.
        max_classes: the most classes in a vocabulary (the model keeps a score for every class
            at every pixel: K x H x W floats).
        max_chars: the longest vocabulary text.
    """

    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 1024
    max_classes: int = 256
    max_chars: int = 20_000


def _header_size(data: bytes, limits: InputLimits) -> Optional[Tuple[int, int]]:
    """(width, height) from the file's header, without decoding its pixels; None when the data
    is no image PIL knows (:func:`decode_image` then says why).

    Raises:
        UserError: more pixels than ``limits.max_pixels`` (or than PIL's own decompression-bomb
            limit).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                size = img.size
    except Image.DecompressionBombError as e:  # over twice PIL's MAX_IMAGE_PIXELS
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise UserError(_too_large(pixels, limits)) from None
    except (OSError, ValueError, SyntaxError, EOFError):
        return None
    width, height = size
    if width * height > limits.max_pixels:
        raise UserError(_too_large(f"{width} x {height} pixels", limits))
    return size


def _too_large(what: str, limits: InputLimits) -> str:
    return (
        f"The image is too large: {what}. This app reads images of up to "
        f"{limits.max_pixels / 1e6:g} megapixels (e.g. 8000 x 5000); downscale it first."
    )


def read_image(
    data: bytes, *, limits: InputLimits, test_size: Tuple[int, int]
) -> Tuple[np.ndarray, List[str]]:
    """Decode an uploaded file as ``tools/demo.py`` reads image files
    (:func:`~vilseg_d2.data.image_io.decode_image`: any mode to RGB, EXIF rotation applied).

    Args:
        data: the file's bytes.
        limits: the sizes allowed.
        test_size: (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST): where an image is downscaled to.

    Returns:
        H x W x 3 uint8 RGB image, and notes for the user (a downscaled image).

    Raises:
        UserError: an empty, truncated or corrupt file, not an image, too many bytes or pixels.
    """
    if not data:
        raise UserError(f"The file is empty (0 bytes): upload an image ({IMAGE_FORMATS}).")
    if len(data) > limits.max_bytes:
        raise UserError(
            f"The file is too large: {len(data) / 2**20:.1f} MB; this app takes up to "
            f"{limits.max_bytes / 2**20:g} MB."
        )
    _header_size(data, limits)
    try:
        rgb = decode_image(data)
    except BadRecordError as e:
        raise UserError(
            f"Cannot read the file as an image ({e}): upload an image ({IMAGE_FORMATS})."
        ) from None
    height, width = rgb.shape[:2]
    if max(height, width) <= limits.max_side:
        return rgb, []
    new_h, new_w = T.ResizeShortestEdge.get_output_shape(height, width, *test_size)
    rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
    note = (
        f"The image ({width} x {height}) is larger than {limits.max_side} pixels a side: it was "
        f"downscaled to {new_w} x {new_h}, the size the model reads it at."
    )
    return rgb, [note]


def read_vocabulary(text: Optional[str], *, limits: InputLimits) -> List[str]:
    """The class names of the vocabulary box (';' between classes, ',' between synonyms), as
    ``tools/demo.py --vocabulary`` reads them; names are NFC-normalised (the same letters typed
    or pasted are the same name).

    Raises:
        UserError: an empty or too long vocabulary, too many classes, a class named twice, a
            class of commas alone.
    """
    text = text or ""
    if len(text) > limits.max_chars:
        raise UserError(
            f"The vocabulary is too long: {len(text):,} characters; this app takes up to "
            f"{limits.max_chars:,}."
        )
    classes = vocabulary_from_text(unicodedata.normalize("NFC", text))
    if len(classes) > limits.max_classes:
        raise UserError(
            f"The vocabulary has {len(classes)} classes; this app segments with up to "
            f"{limits.max_classes} at a time (the model keeps a score for every class at every "
            "pixel). Split it into smaller vocabularies."
        )
    return classes
