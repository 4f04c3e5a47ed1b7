"""Clear errors for bad configs, bad weights and diverging losses (issue 7, first cases)."""

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from vilseg_d2.config import get_vilseg_cfg
from vilseg_d2.engine import check_losses_finite

from helpers import TINY_CONFIG, tiny_cfg


def test_unknown_config_key_is_named_with_what_is_allowed(tmp_path):
    with pytest.raises(KeyError, match=r"Unknown config key MODEL.VILSEG.NUM_CLUSTER\. Did you mean MODEL.VILSEG.NUM_CLUSTERS"):
        get_vilseg_cfg(TINY_CONFIG, ["MODEL.VILSEG.NUM_CLUSTER", 5])
    bad = tmp_path / "bad.yaml"
    bad.write_text("_BASE_: " + TINY_CONFIG + "\nMODEL:\n  VILSEG:\n    FOO: 1\n")
    with pytest.raises(KeyError, match=r"Unknown config key MODEL.VILSEG.FOO\. Keys under MODEL.VILSEG: .*NUM_CLUSTERS"):
        get_vilseg_cfg(str(bad))


def test_too_few_clusters_is_named():
    with pytest.raises(ValueError, match="MODEL.VILSEG.NUM_CLUSTERS must be >= 2, got 1"):
        build_model(tiny_cfg(MODEL__VILSEG__NUM_CLUSTERS=1))


def test_missing_dataset_name_lists_the_registered_ones():
    from vilseg_d2.data import build_caption_train_loader

    cfg = tiny_cfg(DATASETS__TRAIN=("no_such_captions",))
    with pytest.raises(KeyError, match="no_such_captions"):
        build_caption_train_loader(cfg)


def test_nan_loss_stops_with_the_loss_named():
    check_losses_finite({"loss_cross": torch.tensor(1.0)}, 3)
    with pytest.raises(FloatingPointError, match="loss_cluster became nan at iteration 7"):
        check_losses_finite({"loss_cross": torch.tensor(1.0), "loss_cluster": torch.tensor(float("nan"))}, 7)


def test_weights_of_another_cluster_count_are_reported_not_silently_loaded(tmp_path, caplog):
    import logging

    logging.getLogger("fvcore").addHandler(caplog.handler)
    src = build_model(tiny_cfg(MODEL__VILSEG__NUM_CLUSTERS=5))
    path = tmp_path / "c5.pth"
    torch.save({"model": src.state_dict()}, path)
    dst = build_model(tiny_cfg())  # 12 clusters
    before = dst.clustering_head.predictor.weight.clone()
    DetectionCheckpointer(dst).load(str(path))
    assert torch.equal(dst.clustering_head.predictor.weight, before)  # shape mismatch: skipped
    assert "clustering_head.predictor.weight" in caplog.text  # Detectron2's checkpointer names it
    logging.getLogger("fvcore").removeHandler(caplog.handler)
    # the rest of the model did load
    assert torch.equal(dst.backbone.visual.positional_embedding, src.backbone.visual.positional_embedding)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    model = build_model(tiny_cfg())
    with pytest.raises((FileNotFoundError, AssertionError), match="missing.pth"):
        DetectionCheckpointer(model).load(str(tmp_path / "missing.pth"))
