"""Builders shared by the web demo's tests: an untrained tiny model's checkpoint, images of the
synthetic validation world, the app's command line on it, a free localhost port, and bad files
(0 bytes, truncated, not an image, a 20000 x 20000 header)."""

from __future__ import annotations

import socket
import struct
import zlib

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from vilseg_d2.data.synthetic import validation_sample
from vilseg_d2.engine import ViLSegCheckpointer

from helpers import tiny_cfg

# Gradio's own deprecation warnings under numpy 1.x and pandas 3 (none is this project's).
GRADIO_WARNINGS = [
    pytest.mark.filterwarnings("ignore:`np.bool8` is a deprecated alias:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
]
# Rules under which the untrained tiny model (seed 0) gives the images several classes.
RULE_OPTS = ["MODEL.VILSEG.BG_THRESHOLD", "0.4", "MODEL.VILSEG.BG_GLOBAL_SIMILARITY", "0.97"]
VOCABULARY = "circle; square, box; star; heart"


def write_weights(folder) -> str:
    """A checkpoint of the untrained tiny model (seed 0); its path."""
    torch.manual_seed(0)
    ViLSegCheckpointer(build_model(tiny_cfg()), str(folder)).save("model_final")
    return str(folder / "model_final.pth")


def app_opts(weights: str) -> list:
    """The config overrides of the app (and of tools/demo.py) in these tests: the tiny config on
    the CPU with ``weights`` and the rules above (its test size and 10 refinement steps)."""
    return ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, *RULE_OPTS]


def write_images(folder) -> dict:
    """PNG files: two synthetic validation images (128 x 128), one of them cut to 48 x 64 (the
    pictures enlarge it), and an RGBA one."""
    folder.mkdir(parents=True, exist_ok=True)
    one, two = validation_sample(1).image, validation_sample(4).image
    alpha = np.broadcast_to(np.linspace(0, 255, 128).astype(np.uint8), (128, 128))
    images = {
        "scene": Image.fromarray(one),
        "small": Image.fromarray(two[:48, :64]),
        "rgba": Image.fromarray(np.dstack([two, alpha])),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.png"
        image.save(paths[name])
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_header(width: int, height: int) -> bytes:
    """A PNG of ``width`` x ``height`` pixels whose pixel data is missing: a decoder reads its
    size, and a reader that trusted it would allocate width * height * 3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def bad_files(folder) -> dict:
    """Files that are no image a user could mean: their paths by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.png"
    Image.fromarray(validation_sample(1).image).save(good)
    data = good.read_bytes()
    files = {
        "empty": b"",
        "text": b"<html>404 Not Found</html>",
        "truncated": data[: len(data) // 2],
        "huge_20000": png_header(20000, 20000),
        "huge_9000": png_header(9000, 9000),
    }
    paths = {}
    for kind, content in files.items():
        paths[kind] = folder / f"{kind}.png"
        paths[kind].write_bytes(content)
    return paths
