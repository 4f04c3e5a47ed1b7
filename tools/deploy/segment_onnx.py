#!/usr/bin/env python
"""Segment images with an exported ViL-Seg (``tools/export_model.py``), without PyTorch.

    python segment_onnx.py --model exported/ --input photo.jpg photos/ --output out/

Needs only onnxruntime, numpy and OpenCV (``pip install onnxruntime numpy opencv-python-headless``):
copy this file and the exported folder (``model.onnx``, ``classes.json``, ``export.json``) to
the server. It writes what ``tools/demo.py`` writes: per image ``<name>.png`` (input | classes |
clusters, small images enlarged by a whole factor so that the names fit) and one ``shares.json``
with each image's per-class pixel shares, and prints the shares.

What happens where (``export.json``, ``"preprocessing"``): this script reads the image as RGB
(EXIF rotation applied, alpha composited over white, 16-bit scaled to 8 bits), resizes it as
Detectron2's ``ResizeShortestEdge`` does at test time (PIL's bilinear filter, reproduced here in
numpy) and hands the graph 0-255 values and the original size; the graph normalises, pads,
segments with the vocabulary baked in (background rules and mask refinement included) and
returns the class scores and cluster ids at the original size. The pictures are drawn with
OpenCV in the colours of ``classes.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import onnxruntime

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_SIDE = 384  # images with a shorter side are enlarged (by a whole factor) before drawing
CLASS_ALPHA, CLUSTER_ALPHA = 0.6, 0.8  # as tools/demo.py's panels
EDGE_COLOR = (255, 255, 240)  # Detectron2's off-white, RGB
PRECISION_BITS = 32 - 8 - 2  # PIL's fixed-point resampling of 8-bit images


class UnreadableImage(ValueError):
    """A file that cannot be read as an image; the message says why."""


# --------------------------------------------------------------------------- the exported model


class ExportedModel:
    """An exported folder: the onnxruntime session, the classes and the preprocessing.

    Args:
        folder: what ``tools/export_model.py --output`` wrote.
        threads: onnxruntime's intra-op threads (0: its choice, all cores).
    """

    def __init__(self, folder: str, threads: int = 0):
        paths = {n: os.path.join(folder, n) for n in ("model.onnx", "classes.json", "export.json")}
        missing = [n for n, p in paths.items() if not os.path.isfile(p)]
        if missing:
            raise SystemExit(
                f"--model {folder}: {', '.join(missing)} missing. Give the folder that "
                "tools/export_model.py --output wrote (with --format onnx)."
            )
        with open(paths["classes.json"], encoding="utf-8") as f:
            classes = json.load(f)
        with open(paths["export.json"], encoding="utf-8") as f:
            self.export = json.load(f)
        self.classes: List[str] = list(classes["classes"])
        self.colors: List[List[int]] = classes["colors"]
        self.palette: List[List[int]] = classes["palette"]
        self.settings: Dict = classes["settings"]
        self.preprocessing: Dict = self.export["preprocessing"]
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            paths["model.onnx"], options, providers=["CPUExecutionProvider"]
        )

    def inputs(self, rgb: np.ndarray) -> Dict[str, np.ndarray]:
        """The graph's inputs for an H x W x 3 uint8 RGB image: resized as at test time, channels
        in the config's order, 1 x 3 x h x w float32; and the original (H, W)."""
        p = self.preprocessing
        height, width = rgb.shape[:2]
        new_h, new_w = shortest_edge_size(height, width, p["min_size_test"], p["max_size_test"])
        pillow = int(p.get("pillow", "13").split(".")[0])  # exports before the record: 13
        image = resize_bilinear(rgb, new_h, new_w, pillow=pillow)
        if p["format"] == "BGR":
            image = image[:, :, ::-1]
        image = np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1)[None])
        return {"image": image, "output_size": np.array([height, width], dtype=np.int64)}

    def __call__(self, rgb: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Segment an H x W x 3 uint8 RGB image.

        Returns:
            K x H x W float32 class scores (``classes`` order) and H x W int64 cluster ids.
        """
        scores, clusters = self.session.run(["sem_seg", "clusters"], self.inputs(rgb))
        return scores, clusters


# --------------------------------------------------------------------------- images


def read_image(path: str) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB: EXIF rotation applied (8-bit files), alpha
    composited over white, 16-bit grey scaled (/257) to 8 bits.

    Raises:
        UnreadableImage: a missing or empty file, or data OpenCV cannot decode.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UnreadableImage(f"cannot read file: {e}") from None
    if data.size == 0:
        raise UnreadableImage("empty file (zero bytes)")
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        raise UnreadableImage("not an image (OpenCV cannot decode it)")
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    if raw.dtype == np.uint8 and channels in (1, 3):
        # decoded again as colour: OpenCV then applies the EXIF orientation
        return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])
    raw = raw.reshape(raw.shape[0], raw.shape[1], channels)
    if raw.dtype == np.uint16:
        # grey as PIL reads 16-bit grey ("I;16": scaled); colour as it reads 16-bit RGB(A) (the
        # high byte)
        if channels == 1:
            img = np.clip(np.rint(raw.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
        else:
            img = (raw >> 8).astype(np.uint8)
    elif raw.dtype in (np.float32, np.float64):
        if not np.isfinite(raw).all():
            raise UnreadableImage("float image with non-finite values")
        scale = 255.0 if raw.max(initial=0.0) <= 1.0 else 1.0
        img = np.clip(np.rint(raw * scale), 0, 255).astype(np.uint8)
    else:
        img = np.clip(raw, 0, 255).astype(np.uint8)
    if channels in (1, 2):  # grey (+ alpha)
        color = np.repeat(img[:, :, :1], 3, axis=2)
    else:  # BGR (+ alpha)
        color = img[:, :, 2::-1]
    if channels in (2, 4):
        rgba = np.concatenate([color, img[:, :, -1:]], axis=2).astype(np.float32)
        alpha = rgba[:, :, 3:4] / 255.0
        rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(color)


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> Tuple[int, int]:
    """The (h, w) Detectron2's ``ResizeShortestEdge`` gives an image: the shorter side ``short``,
    the longer at most ``max_size``, rounded to the nearest pixel."""
    size = short * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def _bilinear_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """PIL's bilinear resampling of one axis: for each output pixel, the input pixels it reads
    (out x taps, clipped) and their fixed-point weights (0 for unused taps)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1, widened when reducing
    taps = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, taps), dtype=np.int64)
    weight = np.zeros((out_size, taps), dtype=np.int64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - first
        ws = []
        total = 0.0
        for x in range(count):
            w = max(0.0, 1.0 - abs((x + first - center + 0.5) * (1.0 / filterscale)))
            ws.append(w)
            total += w
        for x, w in enumerate(ws):
            w = w / total if total != 0.0 else w
            weight[out, x] = int(w * (1 << PRECISION_BITS) + (0.5 if w >= 0 else -0.5))
            index[out, x] = first + x
        index[out, count:] = first
    return index, weight


def _resample_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    index, weight = _bilinear_taps(image.shape[axis], out_size)
    shape = [1] * image.ndim
    shape[axis] = out_size
    acc = np.full(
        image.shape[:axis] + (out_size,) + image.shape[axis + 1 :],
        1 << (PRECISION_BITS - 1),
        dtype=np.int64,
    )
    for t in range(index.shape[1]):
        acc += np.take(image, index[:, t], axis=axis).astype(np.int64) * weight[:, t].reshape(shape)
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_bilinear(image: np.ndarray, height: int, width: int, *, pillow: int = 13) -> np.ndarray:
    """An H x W x C uint8 image resized as PIL's ``Image.resize(..., BILINEAR)`` resizes it (what
    Detectron2's ``ResizeTransform`` uses), to the same values: one axis after the other, with
    8-bit rounding in between, in the order of Pillow's major version ``pillow`` (13 and later:
    heights first when they shrink by more than twice as many pixels as the widths; earlier:
    always widths first, which changes a few pixel values by 1)."""
    in_h, in_w = image.shape[:2]
    heights_first = pillow >= 13 and height < in_h and in_h - height > 2 * (in_w - width)
    for axis in (0, 1) if heights_first else (1, 0):
        size = height if axis == 0 else width
        if image.shape[axis] != size:
            image = _resample_axis(image, size, axis)
    return image


# --------------------------------------------------------------------------- pictures


def _overlay(image: np.ndarray, ids: np.ndarray, colors: Sequence[Sequence[int]], alpha: float):
    """``image`` with each id's pixels blended with its colour (``colors[id % len(colors)]``)."""
    table = np.asarray(colors, dtype=np.float32)
    painted = table[ids % len(table)]
    return np.clip(np.rint(image * (1 - alpha) + painted * alpha), 0, 255).astype(np.uint8)


def _label(panel: np.ndarray, mask: np.ndarray, text: str, color: Sequence[int]) -> None:
    """Write ``text`` on the largest connected part of ``mask``, on a dark box."""
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count < 2:
        return
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    ys, xs = np.nonzero(parts == largest)
    cx, cy = int(np.median(xs)), int(np.median(ys))
    scale = max(0.4, min(panel.shape[:2]) / 960)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x0, y0 = max(0, cx - tw // 2), max(th + 2, cy + th // 2)
    box = panel[max(0, y0 - th - 2) : y0 + base, x0 : x0 + tw + 2]
    box[:] = (box * 0.2).astype(np.uint8)
    light = tuple(int(c + (255 - c) * 0.7) for c in color)  # the class colour, lighter
    cv2.putText(panel, text, (x0 + 1, y0), cv2.FONT_HERSHEY_SIMPLEX, scale, light, 1, cv2.LINE_AA)


def segmentation_picture(
    rgb: np.ndarray,
    labels: np.ndarray,
    clusters: np.ndarray,
    model: ExportedModel,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """Input | classes (coloured, outlined and named) | clusters, one H' x 3W' x 3 RGB picture;
    images with a shorter side below ``min_side`` are enlarged by a whole factor first."""
    factor = max(1, -(-min_side // min(rgb.shape[:2])))

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)

    image, labels, clusters = up(rgb), up(labels), up(clusters)
    classes = _overlay(image, labels, model.colors, CLASS_ALPHA)
    for k in np.unique(labels):
        mask = (labels == k).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(classes, contours, -1, EDGE_COLOR, 1)
        _label(classes, mask, model.classes[k], model.colors[k])
    return np.concatenate(
        [image, classes, _overlay(image, clusters, model.palette, CLUSTER_ALPHA)], 1
    )


# --------------------------------------------------------------------------- command line


def list_images(inputs: Sequence[str]) -> List[str]:
    """Files, and the images of folders (sorted); SystemExit for a path that does not exist."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(
                f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTS)
            )
            if not found:
                raise SystemExit(f"No images ({', '.join(IMAGE_EXTS)}) in folder {path}.")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SystemExit(f"--input {path}: no such file or folder.")
    return files


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Segment images with an exported ViL-Seg (onnxruntime, no PyTorch)."
    )
    p.add_argument("--model", required=True, help="the folder tools/export_model.py wrote")
    p.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    return p


def main(argv=None) -> Dict[str, Dict[str, float]]:
    args = get_parser().parse_args(argv)
    files = list_images(args.input)
    model = ExportedModel(args.model, args.threads)
    os.makedirs(args.output, exist_ok=True)
    shares: Dict[str, Dict[str, float]] = {}
    for path in files:
        try:
            rgb = read_image(path)
        except UnreadableImage as e:
            print(f"skipped {path}: cannot read it as an image ({e})", file=sys.stderr)
            continue
        scores, clusters = model(rgb)
        labels = scores.argmax(0)
        picture = segmentation_picture(rgb, labels, clusters, model)
        stem = os.path.splitext(os.path.basename(path))[0]
        cv2.imwrite(os.path.join(args.output, f"{stem}.png"), picture[:, :, ::-1])
        counts = np.bincount(labels.reshape(-1), minlength=len(model.classes)) / labels.size
        shares[path] = {c: round(float(s), 6) for c, s in zip(model.classes, counts) if s > 0}
        print(
            f"{path}: "
            + ", ".join(
                f"{c} {100 * s:.1f}%" for c, s in sorted(shares[path].items(), key=lambda x: -x[1])
            )
        )
    with open(os.path.join(args.output, "shares.json"), "w") as f:
        json.dump(shares, f, indent=2)
    return shares


if __name__ == "__main__":
    main()
