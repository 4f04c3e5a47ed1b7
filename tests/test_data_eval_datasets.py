"""Evaluation datasets: prepare scripts on miniature copies of the official archives, then the
registered loaders and metadata, the errors for a misspelt or unprepared dataset, and the prompt
names the evaluation vocabulary gives the model."""

import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from vilseg_d2.data.build import CaptionDatasetNotRegisteredError
from vilseg_d2.data.datasets import register_all, register_synthetic_world
from vilseg_d2.data.datasets.register_coco_stuff import (
    COCO_STUFF_CLASSES,
    COCO_STUFF_PROMPT_NAMES,
    COCO_STUFF_UNSEEN_CLASSES,
    register_coco_stuff_164k,
)
from vilseg_d2.data.datasets.register_pascal_context import register_pascal_context
from vilseg_d2.data.datasets.register_sem_seg import (
    DatasetNotRegisteredError,
    SemSegDatasetNotPreparedError,
    class_prompt_names,
    class_prompts,
    register_sem_seg_dataset,
    remove_if_registered,
    require_sem_seg_dataset,
    sem_seg_dataset_names,
)
from vilseg_d2.data.datasets.register_voc import register_voc_2012
from vilseg_d2.engine import ViLSegTrainer, eval_classes, eval_vocabulary
from vilseg_d2.evaluation import ViLSegSemSegEvaluator
from vilseg_d2.modeling import duplicate_classes

from data_fixtures import (
    PREPARE_ARGS,
    load_prepare_script,
    make_coco_stuff,
    make_pascal_context,
    make_voc2012,
)
from helpers import tiny_cfg


@pytest.fixture(autouse=True)
def restore_default_registrations():
    yield
    register_all(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def read_png(path):
    return np.array(Image.open(path))


def check_metadata(name, num_classes, unseen):
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
    assert len(meta.stuff_classes) == num_classes
    assert meta.unseen_classes == unseen
    assert set(unseen) <= set(meta.stuff_classes)
    return meta


def test_registered_names_and_unseen_classes():
    check_metadata(
        "voc_2012_sem_seg_val", 21, ["potted plant", "sheep", "sofa", "train", "tv monitor"]
    )
    meta20 = check_metadata(
        "voc_2012_sem_seg_val_20", 20, ["potted plant", "sheep", "sofa", "train", "tv monitor"]
    )
    assert "background" not in meta20.stuff_classes
    check_metadata("pascal_context_59_sem_seg_val", 59, ["cow", "motorbike", "sofa", "cat"])
    meta60 = check_metadata(
        "pascal_context_60_sem_seg_val", 60, ["cow", "motorbike", "sofa", "cat"]
    )
    assert meta60.stuff_classes[0] == "background"
    check_metadata(
        "coco_stuff_164k_sem_seg_val",
        171,
        ["frisbee", "skateboard", "cardboard", "carrot", "scissors", "suitcase", "giraffe", "cow",
         "road", "wall-concrete", "tree", "grass", "river", "clouds", "playingfield"],
    )  # fmt: skip
    assert "ade20k_sem_seg_val" in DatasetCatalog.list()  # Detectron2's own, reused
    for name in [
        "voc_2012_sem_seg_val",
        "pascal_context_59_sem_seg_val",
        "coco_stuff_164k_sem_seg_val",
    ]:
        assert len(set(MetadataCatalog.get(name).stuff_classes)) == len(
            MetadataCatalog.get(name).stuff_classes
        )


def test_voc_prepare_and_load(tmp_path):
    masks = make_voc2012(str(tmp_path))
    assert (
        load_prepare_script("prepare_voc_sem_seg").main(PREPARE_ARGS + ["--root", str(tmp_path)])
        == 3
    )
    register_voc_2012(str(tmp_path))
    recs = DatasetCatalog.get("voc_2012_sem_seg_val")
    assert len(recs) == 3  # the train image is not in val
    for r in recs:
        image_id = os.path.splitext(os.path.basename(r["file_name"]))[0]
        assert os.path.isfile(r["file_name"]) and os.path.isfile(r["sem_seg_file_name"])
        label = read_png(r["sem_seg_file_name"])
        assert np.array_equal(label, masks[image_id])  # 0..20 and 255 kept
    recs20 = DatasetCatalog.get("voc_2012_sem_seg_val_20")
    label20 = read_png(recs20[0]["sem_seg_file_name"])
    orig = masks[os.path.splitext(os.path.basename(recs20[0]["file_name"]))[0]]
    expect = np.where(orig == 255, 255, np.where(orig == 0, 255, orig.astype(int) - 1))
    assert np.array_equal(label20, expect)
    assert list(label20[1, :3]) == [255, 0, 19]


def test_pascal_context_prepare_and_load(tmp_path):
    pytest.importorskip("scipy")
    maps, name_to_id = make_pascal_context(str(tmp_path))
    assert (
        load_prepare_script("prepare_pascal_context").main(PREPARE_ARGS + ["--root", str(tmp_path)])
        == 3
    )
    register_pascal_context(str(tmp_path))
    from vilseg_d2.data.datasets.register_pascal_context import PASCAL_CONTEXT_59_CLASSES

    id_to_59 = {name_to_id[c]: k for k, c in enumerate(PASCAL_CONTEXT_59_CLASSES)}
    for name, offset, other in [
        ("pascal_context_59_sem_seg_val", 0, 255),
        ("pascal_context_60_sem_seg_val", 1, 0),
    ]:
        recs = DatasetCatalog.get(name)
        assert len(recs) == 3
        for r in recs:
            image_id = os.path.splitext(os.path.basename(r["file_name"]))[0]
            label = read_png(r["sem_seg_file_name"])
            src = maps[image_id]
            expect = np.vectorize(lambda v: id_to_59[v] + offset if v in id_to_59 else other)(src)
            assert np.array_equal(label, expect)
            assert label[0, 0] == 0 + offset and label[0, 1] == 58 + offset  # aeroplane, wood
            assert label[0, 2] == PASCAL_CONTEXT_59_CLASSES.index("cat") + offset
            assert label[0, 3] == other  # 0 = unlabeled


def test_coco_stuff_prepare_and_load(tmp_path):
    maps = make_coco_stuff(str(tmp_path))
    assert (
        load_prepare_script("prepare_coco_stuff_164k").main(
            PREPARE_ARGS + ["--root", str(tmp_path)]
        )
        == 3
    )
    register_coco_stuff_164k(str(tmp_path))
    recs = DatasetCatalog.get("coco_stuff_164k_sem_seg_val")
    assert len(recs) == 3
    classes = MetadataCatalog.get("coco_stuff_164k_sem_seg_val").stuff_classes
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    ids = [c["id"] for c in COCO_CATEGORIES if c["isthing"]] + list(range(92, 183))
    id_to_index = {i: k for k, i in enumerate(ids)}
    for r in recs:
        label = read_png(r["sem_seg_file_name"])
        src = maps[os.path.splitext(os.path.basename(r["file_name"]))[0]]
        expect = np.vectorize(lambda v: id_to_index.get(int(v) + 1, 255))(src)
        assert np.array_equal(label, expect)
        # person (id 1), unused ids 12 and 91 -> ignore, banner (92), wood (182), unlabeled
        assert list(label[0, :6]) == [0, 255, 255, 80, 170, 255]
        assert classes[0] == "person" and classes[80] == "banner" and classes[170] == "wood"
        assert set(np.unique(label)) <= set(range(171)) | {255}


def test_prepare_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="val.txt"):
        load_prepare_script("prepare_voc_sem_seg").main(["--root", str(tmp_path), "--workers", "0"])
    with pytest.raises(FileNotFoundError, match="stuffthingmaps"):
        load_prepare_script("prepare_coco_stuff_164k").main(
            ["--root", str(tmp_path), "--workers", "0"]
        )
    labels = tmp_path / "labels.txt"
    labels.write_text("1: accordion\n2: aeroplane\n")
    pc = load_prepare_script("prepare_pascal_context")
    with pytest.raises(ValueError, match="lacks the PASCAL Context classes"):
        pc.context59_ids(pc.read_label_names(str(labels)))


# A misspelt name of DATASETS.TEST, and a registered dataset whose files were never prepared.

MISSPELT = "voc_2012_sem_seg_vall"


def test_misspelt_test_dataset_is_named_with_close_matches_wherever_it_is_used():
    cfg = tiny_cfg(DATASETS__TEST=("voc_2012_sem_seg_val", MISSPELT))
    entry_points = {
        "eval_classes": lambda: eval_classes(cfg, MISSPELT),
        "eval_vocabulary": lambda: eval_vocabulary(cfg, MISSPELT),
        "build_test_loader": lambda: ViLSegTrainer.build_test_loader(cfg, MISSPELT),
        "build_evaluator": lambda: ViLSegTrainer.build_evaluator(cfg, MISSPELT),
        # all of DATASETS.TEST is checked before the first dataset is evaluated
        "test": lambda: ViLSegTrainer.test(cfg, model=None),
        # the model's default vocabulary (DATASETS.TEST[0]), before anything is built
        "model": lambda: build_model(tiny_cfg(DATASETS__TEST=(MISSPELT,))),
    }
    for where, call in entry_points.items():
        with pytest.raises(DatasetNotRegisteredError) as e:
            call()
        message = str(e.value)  # the message itself, not a KeyError's repr
        assert message.startswith(f"Dataset '{MISSPELT}' is not registered"), where
        assert "Did you mean 'voc_2012_sem_seg_val' or 'voc_2012_sem_seg_val_20'" in message
        assert "register_sem_seg_dataset(name, image_dir=" in message
        assert "vilseg_d2/data/datasets/register_sem_seg.py" in message
        assert "datasets/README.md" in message
    assert MISSPELT not in DatasetCatalog.list() and MISSPELT not in MetadataCatalog.list()


def test_unknown_name_without_close_match_lists_the_sem_seg_datasets():
    with pytest.raises(KeyError) as e:
        require_sem_seg_dataset("my_own_val")
    message = str(e.value)
    assert "Did you mean" not in message
    for name in SEM_SEG_DATASETS + ["ade20k_sem_seg_val", "synthetic_sem_seg_val"]:
        assert name in message and name in sem_seg_dataset_names()
    assert "synthetic_captions_train" not in message  # a caption dataset is not a candidate
    # The caption loader's error for DATASETS.TRAIN is the same kind.
    assert issubclass(CaptionDatasetNotRegisteredError, DatasetNotRegisteredError)


def test_a_registered_dataset_without_classes_is_not_evaluated():
    with pytest.raises(ValueError, match="'synthetic_captions_train' is registered but is not a"):
        eval_classes(tiny_cfg(), "synthetic_captions_train")


def test_registration_reads_nothing(tmp_path, monkeypatch):
    def no_disk(*args, **kwargs):
        raise AssertionError(f"registration touched the disk: {args}")

    for module, names in [
        (os, ["listdir", "scandir", "stat"]),
        (os.path, ["exists", "isdir", "isfile"]),
    ]:
        for attr in names:
            monkeypatch.setattr(module, attr, no_disk)
    register_all(str(tmp_path / "absent"))
    monkeypatch.undo()
    assert MetadataCatalog.get("voc_2012_sem_seg_val").image_root.startswith(str(tmp_path))
    assert not (tmp_path / "absent").exists()


UNPREPARED = [
    (register_voc_2012, "voc_2012_sem_seg_val", "VOCdevkit/VOC2012/images_detectron2/val",
     "run `python datasets/prepare_voc_sem_seg.py --root {root}`"),
    (register_pascal_context, "pascal_context_59_sem_seg_val",
     "pascal_context/images_detectron2/val",
     "run `python datasets/prepare_pascal_context.py --root {root}`"),
    (register_coco_stuff_164k, "coco_stuff_164k_sem_seg_val", "coco/val2017",
     "run `python datasets/prepare_coco_stuff_164k.py --root {root}`"),
    (lambda root: register_synthetic_world(os.path.join(root, "synthetic")),
     "synthetic_sem_seg_val", "synthetic/val/images",
     "generate it with `python -m vilseg_d2.data.synthetic --out {root}/synthetic`"),
]  # fmt: skip


@pytest.mark.parametrize("register, name, folder, fix", UNPREPARED)
def test_unprepared_dataset_names_its_folder_the_script_and_the_root(
    tmp_path, monkeypatch, register, name, folder, fix
):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register(str(tmp_path))  # lazy: nothing is read until the dataset is loaded
    with pytest.raises(SemSegDatasetNotPreparedError) as e:
        DatasetCatalog.get(name)
    assert isinstance(e.value, FileNotFoundError)
    message = str(e.value)
    assert message.startswith(
        f"Dataset '{name}' is registered but not prepared: the folder "
        f"{os.path.join(str(tmp_path), folder)} does not exist; {fix.format(root=tmp_path)}"
    )
    assert f"The dataset root is $DETECTRON2_DATASETS (now '{tmp_path}': {tmp_path})" in message


def test_unprepared_dataset_says_empty_folder_and_its_other_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "elsewhere"))
    image_dir = tmp_path / "VOCdevkit" / "VOC2012" / "images_detectron2" / "val"
    image_dir.mkdir(parents=True)
    register_voc_2012(str(tmp_path))
    with pytest.raises(SemSegDatasetNotPreparedError) as e:
        DatasetCatalog.get("voc_2012_sem_seg_val_20")
    message = str(e.value)
    assert (
        f"the folder {image_dir} is empty; run `python datasets/prepare_voc_sem_seg.py" in message
    )
    assert (
        f"This dataset was registered under {tmp_path}; $DETECTRON2_DATASETS is now "
        f"'{tmp_path / 'elsewhere'}'" in message
    )


# Prompt names: readable names for the text encoder, metrics keep the dataset's names.

SEM_SEG_DATASETS = [
    "voc_2012_sem_seg_val",
    "voc_2012_sem_seg_val_20",
    "pascal_context_59_sem_seg_val",
    "pascal_context_60_sem_seg_val",
    "coco_stuff_164k_sem_seg_val",
]


@pytest.mark.parametrize("name", SEM_SEG_DATASETS)
def test_prompt_names_cover_the_classes_once_each(name):
    meta = MetadataCatalog.get(name)
    assert len(meta.prompt_names) == len(meta.stuff_classes)
    assert (
        duplicate_classes(meta.prompt_names) == []
    )  # the text encoder's own test of "the same class"
    assert all(
        p.strip() and ";" not in p and "," not in p for p in meta.prompt_names
    )  # no synonym lists
    assert class_prompts(name) == dict(zip(meta.stuff_classes, meta.prompt_names))


def test_coco_stuff_prompts_are_readable_and_metric_names_unchanged():
    meta = MetadataCatalog.get("coco_stuff_164k_sem_seg_val")
    assert meta.stuff_classes == COCO_STUFF_CLASSES  # metric names: the dataset's
    assert {"wall-concrete", "building-other", "sky-other", "playingfield"} <= set(
        meta.stuff_classes
    )
    assert set(COCO_STUFF_PROMPT_NAMES) <= set(COCO_STUFF_CLASSES)
    prompts = class_prompts("coco_stuff_164k_sem_seg_val")
    for dataset_name, prompt in {
        "wall-concrete": "concrete wall", "building-other": "building", "sky-other": "sky",
        "floor-wood": "wooden floor", "desk-stuff": "desk", "playingfield": "playing field",
    }.items():  # fmt: skip
        assert prompts[dataset_name] == prompt
    for c in COCO_STUFF_CLASSES:  # every other name maps to itself
        assert prompts[c] == COCO_STUFF_PROMPT_NAMES.get(c, c)
    assert not [p for p in meta.prompt_names if "-" in p or p.endswith("other")]
    # VOC and Context are spelled readably already: their prompts are their class names.
    for name in SEM_SEG_DATASETS[:4]:
        assert MetadataCatalog.get(name).prompt_names == MetadataCatalog.get(name).stuff_classes


def test_prompt_names_must_name_classes_and_stay_distinct():
    assert class_prompt_names(["wall-other", "sky"], {"wall-other": "wall"}) == ["wall", "sky"]
    with pytest.raises(ValueError, match="not in stuff_classes"):
        class_prompt_names(["wall-other", "sky"], {"wall-brick": "brick wall"})
    with pytest.raises(ValueError, match="share the prompt names"):
        class_prompt_names(["wall-other", "wall"], {"wall-other": "wall"})


@pytest.mark.parametrize("mode", ["all", "unseen"])
@pytest.mark.parametrize("name", SEM_SEG_DATASETS)
def test_eval_vocabulary_gives_the_prompts_of_the_classes_in_their_order(name, mode):
    cfg = tiny_cfg(TEST__VILSEG__VOCABULARY=mode)
    meta = MetadataCatalog.get(name)
    classes, vocabulary = eval_classes(cfg, name), eval_vocabulary(cfg, name)
    assert classes == (meta.stuff_classes if mode == "all" else meta.unseen_classes)
    assert vocabulary == [meta.prompt_names[meta.stuff_classes.index(c)] for c in classes]


def test_coco_stuff_unseen_vocabulary_is_positional():
    cfg = tiny_cfg(TEST__VILSEG__VOCABULARY="unseen")
    classes = eval_classes(cfg, "coco_stuff_164k_sem_seg_val")
    vocabulary = eval_vocabulary(cfg, "coco_stuff_164k_sem_seg_val")
    assert classes == COCO_STUFF_UNSEEN_CLASSES
    assert (classes[9], vocabulary[9]) == ("wall-concrete", "concrete wall")
    assert (classes[14], vocabulary[14]) == ("playingfield", "playing field")
    assert vocabulary[:9] == classes[:9]


@pytest.mark.parametrize("mode", ["all", "unseen"])
def test_evaluator_maps_prompted_predictions_back_by_position(tmp_path, mode):
    """Predictions for prompts ("concrete wall") count for the dataset class at the same
    position ("wall-concrete"), and metrics carry the dataset's names."""
    classes = ["person", "wall-concrete", "sky-other", "playingfield"]
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    gt = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [1, 1, 255, 3], [0, 2, 3, 1]], dtype=np.uint8)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "img" / "a.jpg")
    Image.fromarray(gt).save(tmp_path / "gt" / "a.png")
    name = "_test_prompted_sem_seg"
    register_sem_seg_dataset(
        name, image_dir=str(tmp_path / "img"), gt_dir=str(tmp_path / "gt"), stuff_classes=classes,
        unseen_classes=["playingfield", "wall-concrete"],
        prompt_names={
            "wall-concrete": "concrete wall",
            "sky-other": "sky",
            "playingfield": "playing field",
        },
    )  # fmt: skip
    try:
        cfg = tiny_cfg(TEST__VILSEG__VOCABULARY=mode)
        eval_names, vocabulary = eval_classes(cfg, name), eval_vocabulary(cfg, name)
        if mode == "unseen":
            assert vocabulary == ["playing field", "concrete wall"]
        evaluator = ViLSegSemSegEvaluator(name, distributed=False, classes=eval_names)
        evaluator.reset()
        # A perfect model: channel k is high where the ground truth is the class prompted at k.
        truth = [classes[v] if v != 255 else None for v in gt.reshape(-1)]
        scores = torch.zeros(len(vocabulary), 16)
        for k, prompt in enumerate(vocabulary):
            scores[k] = torch.tensor(
                [float(c is not None and class_prompts(name)[c] == prompt) for c in truth]
            )
        evaluator.process(
            [{"file_name": str(tmp_path / "img" / "a.jpg")}], [{"sem_seg": scores.view(-1, 4, 4)}]
        )
        res = evaluator.evaluate()["sem_seg"]
        assert res["mIoU"] == pytest.approx(100.0) and res["mIoU_unseen"] == pytest.approx(100.0)
        assert {f"IoU-{c}" for c in eval_names} <= set(res) and "IoU-concrete wall" not in res
        with pytest.raises(ValueError, match="not its prompt_names"):
            ViLSegSemSegEvaluator(name, distributed=False, classes=vocabulary)
    finally:
        remove_if_registered(name)
