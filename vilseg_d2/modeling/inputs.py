"""Inference inputs: what an ``image`` may be, and the error that says what to pass instead."""

from __future__ import annotations

import math

import torch

__all__ = ["inference_image"]


def inference_image(image) -> torch.Tensor:
    """An inference input's ``image`` as a 3 x H x W tensor of 0-255 values.

    Raises:
        ValueError: a shape, channel count or value range the model cannot take, with
            what to pass instead.
    """
    image = torch.as_tensor(image)
    if image.dim() == 2:  # H x W grayscale
        image = image[None]
    shape = tuple(image.shape)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        hint = ""
        if image.dim() == 3 and image.shape[-1] in (1, 3, 4):
            hint = " It looks channels-last (H x W x C): pass image.permute(2, 0, 1)."
        elif image.dim() == 3 and image.shape[0] == 4:
            hint = (
                " Remove the alpha channel first: composite it "
                "(vilseg_d2.data.image_io.decode_image reads image files with alpha over white) "
                "or drop it (image[:3])."
            )
        raise ValueError(
            f"'image' must be 3 x H x W (channels in INPUT.FORMAT order) or grayscale 1 x H x W / "
            f"H x W, got shape {shape}.{hint}"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"'image' is empty (shape {shape}).")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.dtype == torch.uint16:  # 16-bit: 65535 -> 255
        return image.float() / 257.0
    if image.dtype != torch.uint8:
        top = float(image.max())
        if not math.isfinite(top) or top > 256:
            raise ValueError(
                f"'image' has values up to {top:g}; the model takes 0-255 pixel values. Scale "
                f"16-bit data to 8 bits (divide by 257) or pass it as a torch.uint16 tensor."
            )
    return image
