"""The synthetic caption world: exact masks, captions that name every object and nothing else,
determinism, the written layout and its two registered datasets."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from vilseg_d2.config import add_vilseg_config
from vilseg_d2.data import (
    build_caption_train_loader,
    generate_synthetic_world,
    register_synthetic_world,
)
from vilseg_d2.data.synthetic import (
    CLASSES,
    COLORS,
    STUFF_CLASSES,
    main,
    make_caption,
    render_sample,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE_WORDS = set(
    "a an and there is are on noisy background textured picture of image photo showing drawing "
    "this contains we can see here simple scene with in front blurry rendering colourful backdrop "
    "next to beside".split()
)


@pytest.fixture(autouse=True)
def restore_default_registration():
    yield
    register_synthetic_world()


def parse_caption(caption):
    """Check the grammar of a caption; return {class: colour word or None}."""
    assert caption == caption.strip() and "  " not in caption
    if caption.endswith("."):
        assert caption[0].isupper()
        caption = caption[0].lower() + caption[1:-1]
    else:
        assert caption[0].islower()
    words = re.findall(r"[a-z]+|,", caption)
    assert " ".join(words).replace(" ,", ",") == caption  # only words, spaces and commas
    named = {}
    for i, w in enumerate(words):
        if w in CLASSES:
            colour = words[i - 1] if words[i - 1] in COLORS else None
            article = words[i - 2] if colour else words[i - 1]
            first = colour or w
            assert article == ("an" if first[0] in "aeiou" else "a"), caption
            assert w not in named, f"{w} named twice: {caption}"
            named[w] = colour
        elif w in COLORS:
            assert words[i + 1] in CLASSES, caption  # colour words only before a shape
        else:
            assert w in TEMPLATE_WORDS or w == ",", f"unexpected word {w!r} in {caption!r}"
    if "there" in words:
        verb = words[words.index("there") + 1]
        singular = len(named) == 1 or (len(named) == 2 and ("next" in words or "beside" in words))
        assert verb == ("is" if singular else "are"), caption
    return named


def test_deterministic_for_a_seed():
    a = render_sample(np.random.default_rng([1, 2, 3]))
    b = render_sample(np.random.default_rng([1, 2, 3]))
    assert (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.label, b.label)
        and a.caption == b.caption
    )
    c = render_sample(np.random.default_rng([1, 2, 4]))
    assert not np.array_equal(a.image, c.image)


def test_masks_are_exact_and_captions_name_every_object():
    num_objects = []
    for i in range(150):
        s = render_sample(np.random.default_rng(i), texture_strength=0.0)  # no noise: exact check
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        assert s.label.shape == (128, 128) and s.label.dtype == np.uint8
        classes = {o.cls for o in s.objects}
        assert len(classes) == len(s.objects) and 1 <= len(s.objects) <= 3
        ids_present = set(np.unique(s.label)) - {0}
        assert {STUFF_CLASSES[k] for k in ids_present} == classes  # every object visible
        named = parse_caption(s.caption)
        assert set(named) == classes  # every object named, nothing else
        for o in s.objects:
            assert named[o.cls] in (None, o.color)
            region = s.label == CLASSES.index(o.cls) + 1
            assert region.sum() >= 40
            colours = np.unique(s.image[region], axis=0)
            assert len(colours) == 1  # the pixels of a label are exactly that object's paint
            assert np.abs(colours[0].astype(int) - COLORS[o.color]).max() <= 13
        bg = np.unique(s.image[s.label == 0], axis=0)
        assert len(bg) <= 1  # flat background when texture_strength = 0
        num_objects.append(len(s.objects))
    assert set(num_objects) == {1, 2, 3}


def test_objects_stand_out_from_a_textured_background():
    for i in range(60):
        s = render_sample(np.random.default_rng(1000 + i))
        for o in s.objects:
            region = s.label == CLASSES.index(o.cls) + 1
            mean = s.image[region].mean(0)
            assert np.linalg.norm(mean - np.array(COLORS[o.color])) < 30
        assert s.image[s.label == 0].std() > 5  # textured
        parse_caption(s.caption)


def test_captions_vary():
    rng = np.random.default_rng(0)
    s = render_sample(rng)
    captions = {make_caption(rng, s.objects) for _ in range(300)}
    assert len(captions) > 15
    with_colour = [c for c in captions if any(w in c.split() for w in COLORS)]
    assert 0 < len(with_colour) < len(captions)


def test_generate_register_and_load(tmp_path):
    out = str(tmp_path / "world")
    meta = generate_synthetic_world(
        out, num_train=30, num_val=8, seed=3, num_workers=2, chunk_size=7
    )
    assert meta["num_train"] == 30 and meta["stuff_classes"] == list(STUFF_CLASSES)
    again = str(tmp_path / "again")
    generate_synthetic_world(again, num_train=30, num_val=8, seed=3, num_workers=0)
    for rel in [
        "train.jsonl",
        "val.jsonl",
        "val/masks/000007.png",
        "val/images/000000.png",
        "train/000029.jpg",
    ]:
        assert (
            open(os.path.join(out, rel), "rb").read() == open(os.path.join(again, rel), "rb").read()
        ), rel
    lines = [json.loads(x) for x in open(os.path.join(out, "train.jsonl"))]
    assert len(lines) == 30 and all(
        os.path.isfile(os.path.join(out, x["file_name"])) for x in lines
    )
    for x in lines:
        assert set(parse_caption(x["caption"])) == {o["class"] for o in x["objects"]}

    register_synthetic_world(out)
    train = DatasetCatalog.get("synthetic_captions_train")
    assert len(train) == 30 and train[0]["file_name"] == os.path.join(out, "train", "000000.jpg")
    val = DatasetCatalog.get("synthetic_sem_seg_val")
    assert len(val) == 8
    for r in val:
        assert r["height"] == r["width"] == 128
        mask = np.array(Image.open(r["sem_seg_file_name"]))
        assert mask.shape == (128, 128) and mask.max() <= 8
        assert np.array(Image.open(r["file_name"])).shape == (128, 128, 3)
    meta = MetadataCatalog.get("synthetic_sem_seg_val")
    assert meta.stuff_classes == list(STUFF_CLASSES) and meta.evaluator_type == "sem_seg"
    assert meta.ignore_label == 255 and meta.unseen_classes == []
    assert MetadataCatalog.get("synthetic_captions_train").caption_source_type == "manifest"

    cfg = get_cfg()
    add_vilseg_config(cfg)
    cfg.DATASETS.TRAIN = ("synthetic_captions_train",)
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.VILSEG.GLOBAL_SIZE = 64
    batch = next(iter(build_caption_train_loader(cfg)))
    assert len(batch) == 4 and batch[0]["image"].shape == (3, 64, 64)

    # A new world replaces the old one entirely (no stale validation files).
    generate_synthetic_world(out, num_train=5, num_val=2, seed=4, num_workers=0)
    assert len(DatasetCatalog.get("synthetic_sem_seg_val")) == 2


def test_missing_world_says_how_to_generate(tmp_path):
    register_synthetic_world(str(tmp_path / "none"))
    for name in ["synthetic_captions_train", "synthetic_sem_seg_val"]:
        with pytest.raises(FileNotFoundError, match="vilseg_d2.data.synthetic --out"):
            DatasetCatalog.get(name)
    os.makedirs(tmp_path / "other" / "train")
    with pytest.raises(FileExistsError, match="not a synthetic world"):
        main(["--out", str(tmp_path / "other"), "--num-train", "1", "--num-val", "1"])


def test_command_line_then_default_registration(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    cmd = [sys.executable, "-m", "vilseg_d2.data.synthetic", "--out", str(tmp_path / "synthetic"),
           "--num-train", "12", "--num-val", "3", "--workers", "1"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True)
    code = (
        "import vilseg_d2\n"
        "from detectron2.data import DatasetCatalog\n"
        "print(len(DatasetCatalog.get('synthetic_captions_train')), "
        "len(DatasetCatalog.get('synthetic_sem_seg_val')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path), env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert res.stdout.split() == ["12", "3"]
