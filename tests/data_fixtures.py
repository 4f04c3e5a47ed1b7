"""Fixture builders of the data tests: encoded images, img2dataset-style shards (with broken
members on demand), caption manifests, and miniature copies of the evaluation archives."""

from __future__ import annotations

import io
import json
import os
import tarfile

import cv2
import numpy as np
from PIL import Image

from helpers import load_script


def random_image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth random RGB uint8 image (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), 0, 255).astype(
        np.uint8
    )


def jpeg_bytes(h: int = 48, w: int = 64, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_image(h, w, seed)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_bytes(img: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: str, members: list[tuple[str, bytes]]) -> str:
    """A tar file with the given (name, data) members, in order."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


# What a broken record of each kind looks like in a shard: (image member or None, caption member
# or None). Each is skipped and counted by the loader.
def broken_members(kind: str, key: str, seed: int) -> list[tuple[str, bytes]]:
    good_jpg = jpeg_bytes(seed=seed)
    members = {
        "truncated_jpeg": [
            (f"{key}.jpg", good_jpg[: len(good_jpg) // 2]),
            (f"{key}.txt", b"a cut image"),
        ],
        "zero_byte": [(f"{key}.jpg", b""), (f"{key}.txt", b"an empty file")],
        "not_image": [
            (f"{key}.jpg", b"<html>404 Not Found</html>"),
            (f"{key}.txt", b"an html page"),
        ],
        "no_image": [(f"{key}.json", b'{"status": "failed"}'), (f"{key}.txt", b"only a caption")],
        "empty_caption": [(f"{key}.jpg", good_jpg), (f"{key}.txt", b"")],
        "whitespace_caption": [(f"{key}.jpg", good_jpg), (f"{key}.txt", b"  \n\t ")],
        "binary_caption": [(f"{key}.jpg", good_jpg), (f"{key}.txt", b"\xff\xfe\x00\x81binary")],
        "no_caption": [(f"{key}.jpg", good_jpg)],
    }
    return members[kind]


BROKEN_KINDS = (
    "truncated_jpeg", "zero_byte", "not_image", "no_image",
    "empty_caption", "whitespace_caption", "binary_caption", "no_caption",
)  # fmt: skip


def make_shards(
    out_dir: str,
    num_shards: int,
    per_shard: int,
    *,
    broken: dict[tuple[int, int], str] | None = None,
    extra_members: dict[int, list[tuple[str, bytes]]] | None = None,
    image_size: int = 32,
) -> tuple[list[str], set[str]]:
    """Write img2dataset-style shards ``00000.tar`` ... with ``key.jpg`` + ``key.txt`` (+ json).

    The caption of a good sample is its key, so tests can identify samples after mapping.

    Args:
        broken: ``{(shard, index): kind}`` samples replaced by a broken one (BROKEN_KINDS).
        extra_members: ``{shard: [(name, data)]}`` appended to a shard (e.g. a stray file).

    Returns:
        (shard paths, keys of the good samples)
    """
    broken = broken or {}
    paths, good = [], set()
    for s in range(num_shards):
        members = []
        for i in range(per_shard):
            key = f"{s:05d}{i:04d}"
            kind = broken.get((s, i))
            if kind:
                members += broken_members(kind, key, seed=s * 1000 + i)
            else:
                img = jpeg_bytes(image_size, image_size + 8, seed=s * 1000 + i)
                members += [
                    (f"{key}.jpg", img),
                    (f"{key}.txt", key.encode()),
                    (f"{key}.json", json.dumps({"key": key, "caption": key}).encode()),
                ]
                good.add(key)
        members += (extra_members or {}).get(s, [])
        paths.append(write_tar(os.path.join(out_dir, f"{s:05d}.tar"), members))
    return paths, good


def write_images(folder: str, n: int, *, size: int = 32, ext: str = "jpg") -> list[str]:
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(n):
        name = f"img{i:03d}.{ext}"
        Image.fromarray(random_image(size, size + 4, seed=i)).save(os.path.join(folder, name))
        names.append(name)
    return names


# ----------------------------------------------------------------- evaluation archive layouts


# The miniature archives below have 3 val images each: the prepare scripts' arguments for them
# (in this process, with the split size of the miniature).
PREPARE_ARGS = ["--workers", "0", "--expected-images", "3"]


def load_prepare_script(name: str):
    """The module of ``datasets/<name>.py`` (a script, not a package module)."""
    return load_script(os.path.join("datasets", name + ".py"), name)


def _palette_png(path: str, label: np.ndarray) -> None:
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[:21] = np.random.default_rng(0).integers(0, 256, (21, 3))
    pal[255] = (224, 224, 192)
    img.putpalette(pal.flatten().tolist())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path)


def make_voc2012(
    root: str, ids=("2007_000033", "2007_000042", "2008_000001")
) -> dict[str, np.ndarray]:
    """VOCdevkit/VOC2012 as extracted from VOCtrainval_11-May-2012.tar (a few val images, one
    train image that must be left out). Returns the val masks written."""
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    rng = np.random.default_rng(1)
    masks = {}
    for k, image_id in enumerate(list(ids) + ["2007_000032"]):
        h, w = 20 + k, 30
        Image.fromarray(random_image(h, w, seed=k)).save(
            os.path.join(_mk(voc, "JPEGImages"), image_id + ".jpg")
        )
        label = rng.integers(0, 21, size=(h, w)).astype(np.uint8)
        label[0, :] = 255  # the boundary ("void") label
        label[1, :3] = [0, 1, 20]
        _palette_png(os.path.join(voc, "SegmentationClass", image_id + ".png"), label)
        masks[image_id] = label
    with open(os.path.join(_mk(voc, "ImageSets", "Segmentation"), "val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return {i: masks[i] for i in ids}


def pascal_context_labels_txt() -> tuple[str, dict[str, int]]:
    """A labels.txt like PASCAL Context's (459 'id: name' lines). Returns (text, name -> id)."""
    from vilseg_d2.data.datasets.register_pascal_context import PASCAL_CONTEXT_59_CLASSES

    spelled = {"potted plant": "pottedplant", "tv monitor": "tvmonitor"}
    names = [f"other{i}" for i in range(459)]
    rng = np.random.default_rng(2)
    ids = rng.choice(np.arange(1, 460), size=59, replace=False)
    for c, i in zip(PASCAL_CONTEXT_59_CLASSES, ids):
        names[i - 1] = spelled.get(c, c)
    text = "".join(f"{i + 1}: {n}\n" for i, n in enumerate(names))
    return text, {c: int(i) for c, i in zip(PASCAL_CONTEXT_59_CLASSES, ids)}


def make_pascal_context(root: str, ids=("2008_000002", "2008_000003", "2010_005993")):
    """pascal_context/ with VOCdevkit/VOC2010, trainval/*.mat (LabelMap) and labels.txt.
    Returns ({id: LabelMap}, class name -> 459-class id)."""
    from scipy.io import savemat

    base = os.path.join(root, "pascal_context")
    text, name_to_id = pascal_context_labels_txt()
    with open(os.path.join(_mk(base), "labels.txt"), "w") as f:
        f.write(text)
    voc = os.path.join(base, "VOCdevkit", "VOC2010")
    rng = np.random.default_rng(3)
    maps = {}
    for k, image_id in enumerate(list(ids) + ["2008_000008"]):
        h, w = 18, 24 + k
        Image.fromarray(random_image(h, w, seed=10 + k)).save(
            os.path.join(_mk(voc, "JPEGImages"), image_id + ".jpg")
        )
        label = rng.integers(1, 460, size=(h, w)).astype(np.uint16)
        label[0, :4] = [name_to_id["aeroplane"], name_to_id["wood"], name_to_id["cat"], 0]
        savemat(os.path.join(_mk(base, "trainval"), image_id + ".mat"), {"LabelMap": label})
        maps[image_id] = label
    with open(os.path.join(_mk(voc, "ImageSets", "Main"), "val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return {i: maps[i] for i in ids}, name_to_id


def make_coco_stuff(root: str, n: int = 3) -> dict[str, np.ndarray]:
    """coco/val2017/*.jpg and coco/stuffthingmaps/val2017/*.png (value = COCO id - 1, 255)."""
    coco = os.path.join(root, "coco")
    rng = np.random.default_rng(4)
    maps = {}
    for k in range(n):
        name = f"{139 + k:012d}"
        Image.fromarray(random_image(16, 20, seed=20 + k)).save(
            os.path.join(_mk(coco, "val2017"), name + ".jpg")
        )
        label = rng.integers(0, 183, size=(16, 20)).astype(np.uint8)
        label[0, :6] = [
            0,
            11,
            90,
            91,
            181,
            255,
        ]  # person, id 12 (unused), 91 (unused), banner, wood
        Image.fromarray(label, mode="L").save(
            os.path.join(_mk(coco, "stuffthingmaps", "val2017"), name + ".png")
        )
        maps[name] = label
    return maps


def _mk(*parts: str) -> str:
    path = os.path.join(*parts)
    os.makedirs(path, exist_ok=True)
    return path
