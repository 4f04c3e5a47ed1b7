"""The environment the project stands on: Detectron2 and open_clip, offline, on CPU."""

import numpy as np
import open_clip
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

import vilseg_d2
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
        name, lambda: [{"file_name": "x.jpg", "sem_seg_file_name": str(gt_file), "height": 8, "width": 8}]
    )
    MetadataCatalog.get(name).set(stuff_classes=["background", "thing"], ignore_label=255, evaluator_type="sem_seg")

    pred = np.zeros((8, 8), dtype=np.int64)
    pred[:, 3:] = 1  # one column of background predicted as thing
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), 2).permute(2, 0, 1).float()

    evaluator = SemSegEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([{"file_name": "x.jpg", "sem_seg_file_name": str(gt_file)}], [{"sem_seg": logits}])
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
