"""ViL-Seg + ST: pseudo-labels keep each class's most confident pixels; the tool labels a
dataset's images (resumably, in several processes) and registers the result; a stock Detectron2
SemanticSegmentor, its encoder initialised from ViL-Seg, trains on them and evaluates."""

import json
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from vilseg_d2.config import get_vilseg_cfg
from vilseg_d2.data.datasets import register_pseudo_label_dataset
from vilseg_d2.data.pseudo_labels import (
    IGNORE_LABEL,
    image_stems,
    keep_most_confident,
    write_manifest,
)
from vilseg_d2.data.synthetic import STUFF_CLASSES, generate_synthetic_world
from vilseg_d2.engine import ViLSegCheckpointer

from helpers import ROOT, tiny_cfg
from train_runs import metrics, run

STUDENT_CONFIG = f"{ROOT}/configs/self_training/synthetic_fpn.yaml"


def _raw(root, stem, labels, conf):
    (root / "raw").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(labels, dtype=np.uint8)).save(root / "raw" / f"{stem}_label.png")
    Image.fromarray(np.array(conf, dtype=np.uint8)).save(root / "raw" / f"{stem}_conf.png")


def test_each_class_keeps_its_most_confident_share(tmp_path):
    # class 0: 8 pixels at confidences 10..80 over two images; class 1: 4 pixels at 200
    _raw(tmp_path, "a", [[0, 0, 0, 0], [1, 1, 0, 0]], [[10, 20, 30, 40], [200, 200, 50, 60]])
    _raw(tmp_path, "b", [[0, 0, 1, 1]], [[70, 80, 200, 200]])
    stats = keep_most_confident(str(tmp_path), ["a", "b"], ["bg", "star", "ring"], keep=0.25)
    a = np.asarray(Image.open(tmp_path / "labels" / "a.png"))
    b = np.asarray(Image.open(tmp_path / "labels" / "b.png"))
    # class 0: the top 2 of 8 (70, 80, both in b); class 1: ties at one level are all kept
    assert (a[0] == IGNORE_LABEL).all() and (a[1] == [1, 1, IGNORE_LABEL, IGNORE_LABEL]).all()
    assert (b == [[0, 0, 1, 1]]).all()
    assert stats["bg"] == {"pixels": 8, "kept": 2, "kept_share": 0.25, "threshold": 70 / 255}
    assert stats["star"]["kept_share"] == 1.0 and stats["ring"]["pixels"] == 0
    with pytest.raises(ValueError, match="share"):
        keep_most_confident(str(tmp_path), ["a"], ["bg", "star"], keep=0)
    with pytest.raises(ValueError, match="stem"):
        image_stems(["x/1.png", "y/1.jpg"])


def test_registered_from_its_folder(tmp_path):
    _raw(tmp_path, "img0", [[1, 0]], [[255, 255]])
    keep_most_confident(str(tmp_path), ["img0"], ["bg", "star"], keep=1.0)
    with pytest.raises(FileNotFoundError, match="tools/pseudo_label.py"):
        register_pseudo_label_dataset(str(tmp_path))
    image = tmp_path / "images" / "img0.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((1, 2, 3), dtype=np.uint8)).save(image)
    write_manifest(str(tmp_path), name="test_pseudo", classes=["bg", "star"], keep=1.0,
                   source={}, stems=["img0"], images=[str(image)])  # fmt: skip
    assert register_pseudo_label_dataset(str(tmp_path)) == "test_pseudo"
    (record,) = DatasetCatalog.get("test_pseudo")
    assert record["file_name"] == str(image)
    assert np.asarray(Image.open(record["sem_seg_file_name"])).tolist() == [[1, 0]]
    meta = MetadataCatalog.get("test_pseudo")
    assert meta.stuff_classes == ["bg", "star"] and meta.ignore_label == IGNORE_LABEL


def test_student_encoder_starts_as_vilseg_image_encoder(tmp_path):
    torch.manual_seed(0)
    teacher = build_model(tiny_cfg())
    ViLSegCheckpointer(teacher, str(tmp_path)).save("model_final")
    cfg = get_vilseg_cfg(STUDENT_CONFIG, ["MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"])
    student = build_model(cfg)
    ViLSegCheckpointer(student).load(str(tmp_path / "model_final.pth"))
    mine = student.backbone.net.state_dict()
    for key, value in teacher.backbone.state_dict().items():
        torch.testing.assert_close(mine[key], value, msg=key)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(STUFF_CLASSES)


def test_pseudo_label_then_train_and_evaluate_the_student(tmp_path):
    """The whole sequence on a small world: pseudo-labels in 2 processes (then a resume that
    labels nothing), the student trained by tools/train_net.py and evaluated by --eval-only."""
    generate_synthetic_world(
        str(tmp_path / "synthetic"), num_train=6, num_val=2, seed=0, num_workers=0
    )
    torch.manual_seed(0)
    teacher = tiny_cfg(MODEL__VILSEG__BG_THRESHOLD=0.5, DATASETS__TEST=("synthetic_sem_seg_val",))
    model = build_model(teacher)
    (tmp_path / "teacher").mkdir()
    ViLSegCheckpointer(model, str(tmp_path / "teacher")).save("model_final")
    config = tmp_path / "teacher" / "config.yaml"
    teacher.defrost()
    teacher.MODEL.WEIGHTS = str(tmp_path / "teacher" / "model_final.pth")
    config.write_text(teacher.dump())
    out = tmp_path / "pseudo"
    label = [sys.executable, f"{ROOT}/tools/pseudo_label.py", "--config-file", str(config),
             "--dataset", "synthetic_captions_train", "--max-images", "5", "--keep", "0.5",
             "--name", "tiny_pseudo", "--output", str(out)]  # fmt: skip
    log = run([*label, "--num-gpus", "2"], tmp_path)
    manifest = json.loads((out / "dataset.json").read_text())
    assert len(manifest["images"]) == 5 and len(list((out / "labels").iterdir())) == 5
    assert manifest["classes"] == list(STUFF_CLASSES)
    kept = [s["kept_share"] for s in manifest["statistics"].values() if s["pixels"]]
    assert kept and all(0.5 <= k <= 1 for k in kept)
    assert "Labelled 0 images" in run(label, tmp_path) and "Pseudo-labels per class" in log

    student = tmp_path / "student"
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "teacher" / "model_final.pth"),
            "DATASETS.TRAIN", '("tiny_pseudo",)', "DATASETS.PSEUDO_LABEL_ROOTS", f'("{out}",)',
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.LOG_PERIOD", "1",
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(student)]  # fmt: skip
    train_net = [sys.executable, f"{ROOT}/tools/train_net.py", "--config-file", STUDENT_CONFIG]
    run([*train_net, *opts], tmp_path)
    assert sorted(metrics(student)) == [0, 1] and (student / "model_final.pth").is_file()
    log = run([*train_net, "--eval-only", *opts, "MODEL.WEIGHTS", str(student / "model_final.pth")],
              tmp_path)  # fmt: skip
    results = json.loads((student / "eval_results.json").read_text())["sem_seg"]
    assert 0 <= results["mIoU"] <= 100 and "Loading from" in log


def test_refined_student_is_the_student_with_pamr(tmp_path):
    """RefinedSemanticSegmentor loads a SemanticSegmentor checkpoint as is, equals it without
    refinement, and with refinement returns PAMR's vote shares of the student's scores (at the
    output size, the image resized to it)."""
    from vilseg_d2.modeling import refine_masks

    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TEST", "()", "MODEL.WEIGHTS", ""]
    torch.manual_seed(0)
    student = build_model(get_vilseg_cfg(STUDENT_CONFIG, opts)).eval()
    ViLSegCheckpointer(student, str(tmp_path)).save("model_final")
    refined_opts = [*opts, "MODEL.META_ARCHITECTURE", "RefinedSemanticSegmentor"]
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    inputs = [{"image": image, "height": 32, "width": 48}]
    with torch.no_grad():
        plain = student(inputs)[0]["sem_seg"]
        for iters in (0, 3):
            cfg = get_vilseg_cfg(
                STUDENT_CONFIG, [*refined_opts, "MODEL.VILSEG.REFINE_ITERS", iters]
            )
            refined = build_model(cfg).eval()
            incompatible = refined.load_state_dict(student.state_dict())
            assert not incompatible.missing_keys and not incompatible.unexpected_keys
            out = refined(inputs)[0]["sem_seg"]
            if iters == 0:
                torch.testing.assert_close(out, plain)
                continue
            small = torch.nn.functional.interpolate(
                ((image.float() - refined.pixel_mean) / refined.pixel_std)[None], size=(32, 48),
                mode="bilinear", align_corners=False,
            )[0]  # fmt: skip
            torch.testing.assert_close(out, refine_masks(small, plain, iterations=3))
            assert out.shape == (9, 32, 48) and torch.allclose(out.sum(0), torch.ones(32, 48))
    with pytest.raises(ValueError, match="REFINE_ITERS"):
        build_model(
            get_vilseg_cfg(STUDENT_CONFIG, [*refined_opts, "MODEL.VILSEG.REFINE_ITERS", -1])
        )
