"""The embedded synthetic caption world (DESIGN section 6).

128×128 images of 1-3 coloured shapes of distinct classes (ids 1..8: circle, square, triangle,
star, hexagon, cross, ring, heart; 0 = background) on a textured background. The training split
has only captions (a JSONL manifest + JPEG images, the format of a user's caption data), the
validation split only dense masks (PNG images + PNG masks, Detectron2's ``load_sem_seg`` layout).

Every pixel's label is the class of the topmost object covering it: each object is rasterised
without anti-aliasing into its own mask, the masks are composited into an object-index map, and
the image is painted from that map, so image and mask never disagree. Captions name every object
of the image (and nothing else), in random order, sometimes with its colour.

Usage::

    python -m vilseg_d2.data.synthetic --out datasets/synthetic [--num-train N --num-val N --seed S]

Output::

    OUT/meta.json                      # parameters; written last (marks a complete world)
    OUT/train.jsonl                    # {"file_name": "train/000000.jpg", "caption", "objects"}
    OUT/train/000000.jpg ...
    OUT/val.jsonl                      # the validation captions and objects, for inspection
    OUT/val/images/000000.png ...
    OUT/val/masks/000000.png ...       # uint8 class ids 0..8
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from .synthetic_shapes import SHAPES, rasterize, rotated

__all__ = [
    "CLASSES",
    "STUFF_CLASSES",
    "COLORS",
    "SyntheticObject",
    "SyntheticSample",
    "render_sample",
    "validation_sample",
    "make_caption",
    "generate_synthetic_world",
    "main",
]

logger = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "heart")
STUFF_CLASSES = ("background",) + CLASSES
# RGB of the colour words used in captions.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
# Colours of the classes in visualisations (metadata ``stuff_colors``), background first.
STUFF_COLORS = [
    (70, 70, 70), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
]  # fmt: skip
FORMAT_VERSION = 1

# Object span (its unrotated extent) as a fraction of the image side.
_MIN_SPAN, _MAX_SPAN = 1.0 / 6.0, 1.0 / 2.0
# Minimum RGB distance between an object's colour and the mean background under it.
_MIN_COLOR_DISTANCE = 90.0
# An object stays if at least this fraction of it (and _MIN_VISIBLE_PIXELS) is not covered.
_MIN_VISIBLE_FRACTION = 0.5
_MIN_VISIBLE_PIXELS = 40

_TEMPLATES = (
    "{objs}",
    "a picture of {objs}",
    "an image of {objs}",
    "a photo showing {objs}",
    "{there} {objs} on a noisy background",
    "{objs} on a textured background",
    "a drawing of {objs}",
    "this image contains {objs}",
    "we can see {objs} here",
    "a simple scene with {objs}",
    "{objs} in front of a blurry background",
    "a rendering of {objs} on a colourful backdrop",
)


@dataclass
class SyntheticObject:
    """One shape: class name, colour word, centre (x, y) and span in pixels, angle in degrees."""

    cls: str
    color: str
    center: tuple[float, float]
    span: float
    angle: float


@dataclass
class SyntheticSample:
    """A rendered sample.

    Attributes:
        image: H×W×3 uint8, RGB.
        label: H×W uint8, class id of the topmost object per pixel (0 = background).
        caption: the caption.
        objects: the objects, bottom to top.
    """

    image: np.ndarray
    label: np.ndarray
    caption: str
    objects: list[SyntheticObject]


def _background(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Smooth low-frequency colour variation around a random muted colour, float32 H×W×3."""
    base = rng.uniform(70.0, 185.0, size=3)
    grid = rng.normal(0.0, 35.0 * strength, size=(4, 4, 3)).astype(np.float32)
    smooth = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return smooth + base.astype(np.float32)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: SyntheticObject, with_color: bool) -> str:
    words = ([obj.color] if with_color else []) + [obj.cls]
    return f"{_article(words[0])} {' '.join(words)}"


def make_caption(rng: np.random.Generator, objects: list[SyntheticObject]) -> str:
    """A caption naming every object once, in random order, sometimes with colour words.

    Args:
        rng: the random generator.
        objects: the objects of the image (distinct classes).

    Returns:
        str: e.g. "a red star and a ring on a textured background".
    """
    order = rng.permutation(len(objects))
    phrases = [_noun_phrase(objects[i], bool(rng.random() < 0.5)) for i in order]
    n = len(phrases)
    style = int(rng.integers(3)) if n > 1 else 0
    if n == 1:
        objs, plural = phrases[0], False
    elif style == 1 and n == 2:
        objs, plural = f"{phrases[0]} next to {phrases[1]}", False
    elif style == 1:
        objs, plural = f"{phrases[0]} and {phrases[1]} next to {phrases[2]}", True
    elif style == 2 and n == 2:
        objs, plural = f"{phrases[0]} beside {phrases[1]}", False
    else:
        objs, plural = (", ".join(phrases[:-1]) + f" and {phrases[-1]}"), True
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    caption = template.format(objs=objs, there="there are" if plural else "there is")
    if rng.random() < 0.5:
        caption = caption[0].upper() + caption[1:] + "."
    return caption


def render_sample(
    rng: np.random.Generator, *, image_size: int = 128, texture_strength: float = 1.0
) -> SyntheticSample:
    """Render one image, its exact label map and its caption.

    Args:
        rng: the random generator (the sample is a pure function of its state).
        image_size: side of the square image.
        texture_strength: scales the background's low-frequency variation and the pixel noise
            (1.0 = DESIGN default; 0 = flat background, no noise).

    Returns:
        SyntheticSample
    """
    size = image_size
    background = _background(rng, size, texture_strength)
    num_objects = int(rng.integers(1, 4))
    classes = [CLASSES[i] for i in rng.choice(len(CLASSES), size=num_objects, replace=False)]
    for _attempt in range(50):
        objects, masks = [], []
        for cls in classes:
            outline, holes = SHAPES[cls]
            span = float(rng.uniform(_MIN_SPAN, _MAX_SPAN) * size)
            angle = float(rng.uniform(0.0, 360.0))
            out_r = rotated(outline, span, angle)
            holes_r = [rotated(h, span, angle) for h in holes]
            lo, hi = out_r.min(0), out_r.max(0)
            cx = float(rng.uniform(-lo[0], size - hi[0]))
            cy = float(rng.uniform(-lo[1], size - hi[1]))
            masks.append(rasterize(out_r, holes_r, (cx, cy), size))
            objects.append(SyntheticObject(cls, "", (cx, cy), span, angle))
        index = np.full((size, size), -1, np.int16)  # topmost object per pixel
        for i, m in enumerate(masks):
            index[m] = i
        visible = [int((index == i).sum()) for i in range(len(masks))]
        if all(
            v >= _MIN_VISIBLE_PIXELS and v >= _MIN_VISIBLE_FRACTION * m.sum()
            for v, m in zip(visible, masks)
        ):
            break
        if _attempt % 10 == 9 and len(classes) > 1:
            classes = classes[:-1]  # crowded: fewer objects
    else:  # pragma: no cover - a single object always fits
        raise RuntimeError("could not place the synthetic objects")

    names = list(COLORS)
    rgb_table = np.array([COLORS[c] for c in names], np.float32)
    rgb = []
    for i, m in enumerate(masks):
        local = background[m].mean(axis=0)
        dist = np.linalg.norm(rgb_table - local, axis=1)
        taken = {objects[j].color for j in range(i) if (masks[j] & m).any()}
        ok = [k for k, c in enumerate(names) if dist[k] >= _MIN_COLOR_DISTANCE and c not in taken]
        if not ok:
            ok = [k for k in np.argsort(-dist) if names[k] not in taken][:1]
        k = int(ok[int(rng.integers(len(ok)))])
        objects[i].color = names[k]
        rgb.append(rgb_table[k] + rng.uniform(-12.0, 12.0, size=3).astype(np.float32))

    image = background
    label = np.zeros((size, size), np.uint8)
    for i, obj in enumerate(objects):
        sel = index == i
        image[sel] = rgb[i]
        label[sel] = CLASSES.index(obj.cls) + 1
    if texture_strength > 0:
        image += rng.standard_normal((size, size, 3), dtype=np.float32) * (6.0 * texture_strength)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return SyntheticSample(image, label, make_caption(rng, objects), objects)


def _sample_rng(seed: int, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, index])


def validation_sample(
    index: int, seed: int = 0, *, image_size: int = 128, texture_strength: float = 1.0
) -> SyntheticSample:
    """Sample ``index`` of the validation split of the world of ``seed``, rendered in memory: the
    image and mask that ``generate_synthetic_world`` writes as ``val/images/{index:06d}.png``."""
    return render_sample(
        _sample_rng(seed, 1, index), image_size=image_size, texture_strength=texture_strength
    )


def _objects_json(objects: list[SyntheticObject]) -> list[dict]:
    return [{"class": o.cls, "color": o.color} for o in objects]


def _render_chunk(args) -> list[dict]:
    """Render and write samples [start, end) of a split; return their manifest lines."""
    out_dir, split, start, end, seed, image_size, texture_strength = args
    lines = []
    for i in range(start, end):
        s = render_sample(
            _sample_rng(seed, split, i), image_size=image_size, texture_strength=texture_strength
        )
        bgr = s.image[:, :, ::-1]
        name = f"{i:06d}"
        if split == 0:
            rel = f"train/{name}.jpg"
            cv2.imwrite(os.path.join(out_dir, rel), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            lines.append(
                {"file_name": rel, "caption": s.caption, "objects": _objects_json(s.objects)}
            )
        else:
            rel, rel_mask = f"val/images/{name}.png", f"val/masks/{name}.png"
            cv2.imwrite(os.path.join(out_dir, rel), bgr)
            cv2.imwrite(os.path.join(out_dir, rel_mask), s.label)
            lines.append(
                {"file_name": rel, "sem_seg_file_name": rel_mask, "caption": s.caption,
                 "objects": _objects_json(s.objects)}
            )  # fmt: skip
    return lines


def _prepare_out_dir(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    ours = ["train", "val", "train.jsonl", "val.jsonl", "meta.json"]
    present = [p for p in ours if os.path.exists(os.path.join(out_dir, p))]
    if present and not os.path.exists(os.path.join(out_dir, "meta.json")):
        raise FileExistsError(
            f"{out_dir} holds {present} but no meta.json: it is not a synthetic world written by "
            f"this command. Choose an empty or new folder."
        )
    for p in present:  # replace a previous world entirely (no stale files in val/)
        path = os.path.join(out_dir, p)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for d in ("train", "val/images", "val/masks"):
        os.makedirs(os.path.join(out_dir, d), exist_ok=True)


def generate_synthetic_world(
    out_dir: str,
    num_train: int = 20000,
    num_val: int = 500,
    seed: int = 0,
    *,
    image_size: int = 128,
    texture_strength: float = 1.0,
    num_workers: int | None = None,
    chunk_size: int = 250,
) -> dict:
    """Write the synthetic caption world to ``out_dir`` (replacing a previous one there).

    Deterministic for a seed: sample i of a split depends only on (seed, split, i).

    Args:
        out_dir: output folder.
        num_train: training image-caption pairs.
        num_val: validation images with masks.
        seed: the world's seed.
        image_size: image side in pixels (DESIGN: 128).
        texture_strength: background texture and noise strength (1.0 = DESIGN default).
        num_workers: processes (default: CPU count, at most 8; 0 or 1 = in this process).
        chunk_size: samples per task.

    Returns:
        dict: the contents of ``meta.json``.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if texture_strength < 0:
        raise ValueError(f"texture_strength must be >= 0, got {texture_strength}")
    _prepare_out_dir(out_dir)
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8)
    t0 = time.perf_counter()
    tasks = [
        (out_dir, split, s, min(s + chunk_size, n), seed, image_size, texture_strength)
        for split, n in ((0, num_train), (1, num_val))
        for s in range(0, n, chunk_size)
    ]
    results: list[list[dict]] = []
    with tqdm(total=num_train + num_val, desc="synthetic world", unit="img") as bar:
        if num_workers <= 1:
            for task in tasks:
                results.append(_render_chunk(task))
                bar.update(task[3] - task[2])
        else:
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("fork" if "fork" in methods else None)
            with ctx.Pool(num_workers) as pool:
                for task, lines in zip(tasks, pool.imap(_render_chunk, tasks)):
                    results.append(lines)
                    bar.update(task[3] - task[2])
    for split, manifest in ((0, "train.jsonl"), (1, "val.jsonl")):
        with open(os.path.join(out_dir, manifest), "w", encoding="utf-8") as f:
            for task, lines in zip(tasks, results):
                if task[1] == split:
                    f.writelines(json.dumps(line) + "\n" for line in lines)
    meta = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "texture_strength": texture_strength,
        "stuff_classes": list(STUFF_CLASSES),
        "colors": COLORS,
    }
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    logger.info(
        f"Wrote the synthetic world ({num_train} train, {num_val} val) to {out_dir} in "
        f"{time.perf_counter() - t0:.1f} s."
    )
    return meta


def main(argv: list[str] | None = None) -> dict:
    """Command line: ``python -m vilseg_d2.data.synthetic --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "synthetic")
    parser.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--num-train", type=int, default=20000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--texture-strength", type=float, default=1.0,
                        help="background texture and noise strength (0 = flat)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    args = parser.parse_args(argv)
    return generate_synthetic_world(
        args.out,
        args.num_train,
        args.num_val,
        args.seed,
        image_size=args.image_size,
        texture_strength=args.texture_strength,
        num_workers=args.workers,
    )


if __name__ == "__main__":
    from detectron2.utils.logger import setup_logger

    setup_logger(name="vilseg_d2")
    main()
