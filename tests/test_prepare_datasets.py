"""The prepare scripts prove the splits they write (sizes, files before and after), and the class id
tables of COCO-Stuff and PASCAL Context match the published ones, written out here as constants
rather than recomputed the way the code computes them."""

import numpy as np
import pytest

from vilseg_d2.data.datasets.prepare_utils import SplitCheckError, check_outputs, run_script
from vilseg_d2.data.datasets.register_coco_stuff import COCO_STUFF_CATEGORIES, COCO_STUFF_CLASSES
from vilseg_d2.data.datasets.register_pascal_context import PASCAL_CONTEXT_59_CLASSES

from data_fixtures import (
    PREPARE_ARGS,
    load_prepare_script,
    make_coco_stuff,
    make_pascal_context,
    make_voc2012,
)

# ------------------------------------------------------------------ split sizes and short splits

# (script, fixture, official val size, message when the fixture's 3 images are taken for the
# official split)
SCRIPTS = [
    ("prepare_voc_sem_seg", make_voc2012, 1449,
     "ImageSets/Segmentation/val.txt lists 3 images, not the 1449 of the official split"),
    ("prepare_pascal_context", make_pascal_context, 5105,
     "ImageSets/Main/val.txt lists 3 images, not the 5105 of the official split"),
    ("prepare_coco_stuff_164k", make_coco_stuff, 5000,
     "stuffthingmaps/val2017 holds the masks of 3 images, not the 5000 of the official split"),
]  # fmt: skip


@pytest.mark.parametrize("script, make, official, short", SCRIPTS)
def test_split_size_is_checked(tmp_path, monkeypatch, script, make, official, short):
    if script == "prepare_pascal_context":
        pytest.importorskip("scipy")
    make(str(tmp_path))
    module = load_prepare_script(script)
    assert module.VAL_IMAGES == official
    args = ["--root", str(tmp_path), "--workers", "0"]
    with pytest.raises(SplitCheckError, match="--expected-images 3 to prepare this subset") as e:
        module.main(args)
    assert short in str(e.value)
    monkeypatch.setattr(module, "VAL_IMAGES", 3)  # the expected count, patched down
    assert module.main(args) == 3


def test_voc_val_txt_naming_images_without_jpeg_is_short(tmp_path, capsys):
    make_voc2012(str(tmp_path))
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "2007_000042.jpg").unlink()
    module = load_prepare_script("prepare_voc_sem_seg")
    args = PREPARE_ARGS + ["--root", str(tmp_path)]
    with pytest.raises(SplitCheckError) as e:
        module.main(args)
    assert str(e.value).startswith(
        f"{voc / 'ImageSets' / 'Segmentation' / 'val.txt'} lists 3 images but 1 of them have no "
        f"JPEG in {voc / 'JPEGImages'}: first missing 2007_000042.jpg; extract "
        f"VOCtrainval_11-May-2012.tar again in {tmp_path}."
    )
    assert not (voc / "annotations_detectron2").exists()  # checked before anything is written
    # As a command: the message on stderr and exit status 1, no traceback.
    assert run_script(lambda: module.main(args)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "first missing 2007_000042.jpg" in err
    assert "Traceback" not in err


def test_voc_stale_outputs_of_an_earlier_run_are_reported(tmp_path):
    make_voc2012(str(tmp_path))
    module = load_prepare_script("prepare_voc_sem_seg")
    args = PREPARE_ARGS + ["--root", str(tmp_path)]
    assert module.main(args) == 3 and run_script(lambda: module.main(args)) == 0
    stale = tmp_path / "VOCdevkit" / "VOC2012" / "annotations_detectron2_20" / "val"
    (stale / "2011_999999.png").write_bytes(b"")
    with pytest.raises(SplitCheckError, match=f"{stale} holds 1 .png files that are not in the"):
        module.main(args)


def test_pascal_context_ids_without_label_map_are_short(tmp_path):
    pytest.importorskip("scipy")
    make_pascal_context(str(tmp_path))
    base = tmp_path / "pascal_context"
    (base / "trainval" / "2010_005993.mat").unlink()
    with pytest.raises(SplitCheckError) as e:
        load_prepare_script("prepare_pascal_context").main(PREPARE_ARGS + ["--root", str(tmp_path)])
    assert (
        f"lists 3 images but 1 of them have no .mat label map in {base / 'trainval'}: first "
        f"missing 2010_005993.mat; extract PASCAL Context's trainval.tar.gz again" in str(e.value)
    )


def test_coco_stuff_masks_without_jpeg_are_short(tmp_path):
    make_coco_stuff(str(tmp_path))
    coco = tmp_path / "coco"
    (coco / "val2017" / "000000000140.jpg").unlink()
    with pytest.raises(SplitCheckError) as e:
        load_prepare_script("prepare_coco_stuff_164k").main(
            PREPARE_ARGS + ["--root", str(tmp_path)]
        )
    assert str(e.value).startswith(
        f"{coco / 'stuffthingmaps' / 'val2017'} holds the masks of 3 images but 1 of them have "
        f"no JPEG in {coco / 'val2017'}: first missing 000000000140.jpg; unzip val2017.zip again"
    )


def test_check_outputs_names_the_short_folder(tmp_path):
    (tmp_path / "out").mkdir()
    for i in ["a", "b"]:
        (tmp_path / "out" / f"{i}.png").write_bytes(b"")
    check_outputs(["a", "b"], [(str(tmp_path / "out"), ".png")])
    with pytest.raises(SplitCheckError) as e:
        check_outputs(["a", "b", "c"], [(str(tmp_path / "out"), ".png")])
    assert str(e.value) == (
        f"{tmp_path / 'out'} holds 2 of the 3 .png files of the split: first missing c.png; run "
        f"the script again."
    )
    with pytest.raises(SplitCheckError, match="holds 0 of the 1 .jpg files"):
        check_outputs(["a"], [(str(tmp_path / "never_written"), ".jpg")])


# ------------------------------------------------------------------ reference id tables

# COCO-Stuff: the 11 COCO thing ids of the 91-thing taxonomy that have no annotations (checked
# against mmsegmentation's tools/dataset_converters/coco_stuff164k.py, whose clsID_to_trID skips
# the stored values id - 1 of exactly these).
COCO_STUFF_UNUSED_THING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
# A few (stored value = id - 1, contiguous label) pairs of that table.
COCO_STUFF_REFERENCE_PAIRS = {0: 0, 10: 10, 12: 11, 24: 23, 26: 24, 89: 79, 91: 80, 181: 170}


def test_coco_stuff_ids_are_the_91_things_minus_the_11_unused_then_the_91_stuff():
    ids = [i for i, _ in COCO_STUFF_CATEGORIES]
    assert len(ids) == 171 and ids == sorted(ids)
    assert not set(ids) & set(COCO_STUFF_UNUSED_THING_IDS)
    assert set(ids) | set(COCO_STUFF_UNUSED_THING_IDS) == set(range(1, 183))
    names = dict(COCO_STUFF_CATEGORIES)
    assert (names[1], names[13], names[90], names[92], names[182]) == (
        "person", "stop sign", "toothbrush", "banner", "wood",
    )  # fmt: skip
    assert COCO_STUFF_CLASSES[79:81] == ["toothbrush", "banner"]


def test_coco_stuff_lut_maps_the_stored_values_to_0_170_and_the_rest_to_255():
    lut = load_prepare_script("prepare_coco_stuff_164k").LUT
    assert lut.shape == (256,) and lut.dtype == np.uint8
    used = [v for v in range(182) if v + 1 not in COCO_STUFF_UNUSED_THING_IDS]
    assert [int(lut[v]) for v in used] == list(range(171))  # in order, no gaps
    for stored, label in COCO_STUFF_REFERENCE_PAIRS.items():
        assert lut[stored] == label
    ignored = [i - 1 for i in COCO_STUFF_UNUSED_THING_IDS] + [182] + list(range(183, 256))
    assert all(lut[v] == 255 for v in ignored)  # unused things, 183 "other", unlabeled 255


# PASCAL Context: the 459-class ids of the 59 classes, with their names as labels.txt spells them
# (the standard table of open-mmlab/mmsegmentation tools/dataset_converters/pascal_context.py,
# also NVlabs/ODISE's prepare script: `_mapping` without 0, sorted; its class order is this one).
PASCAL_CONTEXT_59_SOURCE = {
    2: "aeroplane", 9: "bag", 18: "bed", 19: "bedclothes", 22: "bench", 23: "bicycle",
    25: "bird", 31: "boat", 33: "book", 34: "bottle", 44: "building", 45: "bus", 46: "cabinet",
    59: "car", 65: "cat", 68: "ceiling", 72: "chair", 80: "cloth", 85: "computer", 98: "cow",
    104: "cup", 105: "curtain", 113: "dog", 115: "door", 144: "fence", 158: "floor",
    159: "flower", 162: "food", 187: "grass", 189: "ground", 207: "horse", 220: "keyboard",
    232: "light", 258: "motorbike", 259: "mountain", 260: "mouse", 284: "person", 295: "plate",
    296: "platform", 308: "pottedplant", 324: "road", 326: "rock", 347: "sheep", 349: "shelves",
    354: "sidewalk", 355: "sign", 360: "sky", 366: "snow", 368: "sofa", 397: "table",
    415: "track", 416: "train", 420: "tree", 424: "truck", 427: "tvmonitor", 440: "wall",
    445: "water", 454: "window", 458: "wood",
}  # fmt: skip


def test_pascal_context_59_ids_found_in_labels_txt_are_the_standard_ones(tmp_path):
    pc = load_prepare_script("prepare_pascal_context")
    assert len(PASCAL_CONTEXT_59_SOURCE) == 59
    # The code's class order is the standard one (its names spaced for the prompts).
    assert [c.replace(" ", "") for c in PASCAL_CONTEXT_59_CLASSES] == list(
        PASCAL_CONTEXT_59_SOURCE.values()
    )
    labels = tmp_path / "labels.txt"
    labels.write_text(
        "".join(f"{i}: {PASCAL_CONTEXT_59_SOURCE.get(i, f'class{i}')}\n" for i in range(1, 460))
    )
    ids = pc.context59_ids(pc.read_label_names(str(labels)))
    assert ids == list(PASCAL_CONTEXT_59_SOURCE)
    lut59, lut60 = pc.build_luts(ids, 459)
    assert lut59.shape == lut60.shape == (460,)
    for k, source in enumerate(PASCAL_CONTEXT_59_SOURCE):
        assert (lut59[source], lut60[source]) == (k, k + 1)
    others = [i for i in range(460) if i not in PASCAL_CONTEXT_59_SOURCE]  # 0 = unlabeled
    assert len(others) == 401
    assert all(lut59[i] == 255 and lut60[i] == 0 for i in others)
