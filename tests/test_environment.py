"""The environment the project stands on: Detectron2 and open_clip, offline, on CPU; the
dependency floors of setup.py and the installed versions that must satisfy them."""

import ast
import importlib.metadata
import os

import numpy as np
import open_clip
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from PIL import Image

from vilseg_d2 import add_vilseg_backbone_config, add_vilseg_config


def test_config_functions_only_add_keys():
    cfg = get_cfg()
    before = set(cfg.MODEL.keys())
    add_vilseg_config(cfg)
    assert before < set(cfg.MODEL.keys())
    assert cfg.MODEL.OPEN_CLIP.MODEL_NAME == "ViT-B-16"
    assert cfg.MODEL.VILSEG.NUM_CLUSTERS == 25
    # The backbone keys alone, for other Detectron2 projects.
    cfg2 = get_cfg()
    add_vilseg_backbone_config(cfg2)
    assert "OPEN_CLIP" in cfg2.MODEL and "VILSEG" not in cfg2.MODEL


def test_sem_seg_evaluator_on_tiny_in_memory_dataset(tmp_path):
    """Detectron2's SemSegEvaluator computes the IoU we compute by hand."""
    gt = np.zeros((8, 8), dtype=np.uint8)
    gt[:, 4:] = 1
    gt[0, 0] = 255  # ignored pixel
    gt_file = tmp_path / "gt.png"
    Image.fromarray(gt).save(gt_file)
    name = "vilseg_test_tiny_semseg"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name,
        lambda: [
            {"file_name": "x.jpg", "sem_seg_file_name": str(gt_file), "height": 8, "width": 8}
        ],
    )
    MetadataCatalog.get(name).set(
        stuff_classes=["background", "thing"], ignore_label=255, evaluator_type="sem_seg"
    )

    pred = np.zeros((8, 8), dtype=np.int64)
    pred[:, 3:] = 1  # one column of background predicted as thing
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), 2).permute(2, 0, 1).float()

    evaluator = SemSegEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process(
        [{"file_name": "x.jpg", "sem_seg_file_name": str(gt_file)}], [{"sem_seg": logits}]
    )
    res = evaluator.evaluate()["sem_seg"]

    valid = gt != 255
    ious = []
    for c in range(2):
        inter = np.sum((pred == c) & (gt == c) & valid)
        union = np.sum(((pred == c) | (gt == c)) & valid)
        ious.append(inter / union)
    assert res["mIoU"] == pytest.approx(100 * np.mean(ious))
    assert res["pACC"] == pytest.approx(100 * np.mean(pred[valid] == gt[valid]))


def test_open_clip_tiny_model_from_shipped_config_offline():
    assert "ViLSeg-Tiny" in open_clip.list_models()
    model = open_clip.create_model("ViLSeg-Tiny", pretrained=None)
    tokenizer = open_clip.get_tokenizer("ViLSeg-Tiny")
    tokens = tokenizer(["a red star and a blue ring", "a photo of a cat."])
    assert tokens.shape == (2, 32)
    with torch.no_grad():
        img = model.encode_image(torch.randn(2, 3, 128, 128))
        txt = model.encode_text(tokens)
    assert img.shape == txt.shape == (2, 128)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()


SETUP_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")

# The oldest release of each dependency with every API the code uses: setup.py's floors may not go
# below these. Raise an entry when the code starts using something newer.
MINIMUM_VERSIONS = {
    "torch": (
        "2.4",
        "torch.is_autocast_enabled(device_type); GradScaler('cpu'), torch.uint16, "
        "sdpa_kernel (2.3)",
    ),
    "torchvision": ("0.19", "the release built for torch 2.4"),
    "numpy": ("1.17", "np.random.default_rng"),
    "open_clip_torch": (
        "2.27",
        "open_clip.constants.HF_SAFE_WEIGHTS_NAME; batch-first Transformer (2.26.1)",
    ),
    "webdataset": ("0.2.86", "shardlists.expand_urls, SimpleShardList(seed=), shuffle(rng=)"),
}


def setup_py_requirements() -> list:
    """setup.py's ``install_requires``, read from its source (an editable install's metadata
    keeps the requirements of the last ``pip install -e .``, not the file's)."""
    with open(SETUP_PY, encoding="utf-8") as f:
        tree = ast.parse(f.read(), SETUP_PY)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                if kw.arg == "install_requires":
                    return [Requirement(r) for r in ast.literal_eval(kw.value)]
    raise AssertionError(f"No setup(install_requires=[...]) literal in {SETUP_PY}.")


def declared_floor(req: Requirement):
    """The lowest version ``req`` allows (the highest of its lower bounds), None if unbounded."""
    floors = []
    for spec in req.specifier:
        if spec.operator in (">=", ">", "~=", "==", "==="):
            try:
                floors.append(Version(spec.version))
            except InvalidVersion:  # "==2.*": not a single version
                continue
    return max(floors, default=None)


def test_installed_versions_satisfy_setup_py():
    problems = []
    for req in setup_py_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} does not satisfy {req}")
    assert not problems, (
        "; ".join(problems) + ". Run `pip install -e '.[dev]'` (the Makefile's `make setup`)."
    )


def test_setup_py_floors_cover_the_apis_the_code_uses():
    declared = {canonicalize_name(r.name): r for r in setup_py_requirements()}
    problems = []
    for name, (minimum, needs) in MINIMUM_VERSIONS.items():
        req = declared.get(canonicalize_name(name))
        if req is None:
            problems.append(
                f"{name} is missing from install_requires (the code needs >= {minimum}: {needs})"
            )
            continue
        floor = declared_floor(req)
        if floor is None or floor < Version(minimum):
            problems.append(
                f"setup.py declares {req}, but the code needs {name} >= {minimum} ({needs})"
            )
    assert not problems, "; ".join(problems) + "."
