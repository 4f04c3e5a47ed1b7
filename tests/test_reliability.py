"""Clear errors for bad configs, bad weights and diverging losses (issue 7, first cases)."""

import logging

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from vilseg_d2.config import get_vilseg_cfg
from vilseg_d2.engine import check_losses_finite

from helpers import TINY_CONFIG, tiny_cfg


def test_unknown_config_key_is_named_with_what_is_allowed(tmp_path):
    with pytest.raises(
        KeyError,
        match=(
            r"Unknown config key MODEL.VILSEG.NUM_CLUSTER\. "
            r"Did you mean MODEL.VILSEG.NUM_CLUSTERS"
        ),
    ):
        get_vilseg_cfg(TINY_CONFIG, ["MODEL.VILSEG.NUM_CLUSTER", 5])
    bad = tmp_path / "bad.yaml"
    bad.write_text("_BASE_: " + TINY_CONFIG + "\nMODEL:\n  VILSEG:\n    FOO: 1\n")
    with pytest.raises(
        KeyError,
        match=r"Unknown config key MODEL.VILSEG.FOO\. Keys under MODEL.VILSEG: .*NUM_CLUSTERS",
    ):
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
        check_losses_finite(
            {"loss_cross": torch.tensor(1.0), "loss_cluster": torch.tensor(float("nan"))}, 7
        )


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
    assert torch.equal(
        dst.backbone.visual.positional_embedding, src.backbone.visual.positional_embedding
    )


def test_missing_weights_file_is_a_clear_error(tmp_path):
    model = build_model(tiny_cfg())
    with pytest.raises((FileNotFoundError, AssertionError), match="missing.pth"):
        DetectionCheckpointer(model).load(str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------- weights (ViLSegCheckpointer)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint as the trainer writes it (Detectron2's checkpointer: model + trainer state)."""
    from vilseg_d2.engine import ViLSegCheckpointer

    model = build_model(tiny_cfg())
    out = tmp_path_factory.mktemp("ckpt")
    opt = torch.optim.AdamW(model.parameters())
    ViLSegCheckpointer(model, str(out), optimizer=opt).save("model_0000009", iteration=9)
    return out / "model_0000009.pth", model


def test_project_checkpointer_reads_pth_with_weights_only(tiny_checkpoint, monkeypatch):
    from vilseg_d2.engine import ViLSegCheckpointer

    path, src = tiny_checkpoint
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    dst = build_model(tiny_cfg())
    extra = ViLSegCheckpointer(dst).load(str(path))
    assert calls == [True]
    assert extra["iteration"] == 9
    for name, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[name], value), name


def test_truncated_weights_file_is_an_error_naming_it(tiny_checkpoint, tmp_path):
    from vilseg_d2.engine import ViLSegCheckpointer

    data = tiny_checkpoint[0].read_bytes()
    cut = tmp_path / "cut_in_half.pth"
    cut.write_bytes(data[: len(data) // 2])
    model = build_model(tiny_cfg())
    with pytest.raises(
        RuntimeError, match=r"Cannot read checkpoint .*cut_in_half\.pth: it is truncated, corrupt"
    ):
        ViLSegCheckpointer(model).load(str(cut))
    html = tmp_path / "download_error.pth"  # a failed download saved under the checkpoint's name
    html.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(RuntimeError, match=r"download_error\.pth: it is truncated, corrupt"):
        ViLSegCheckpointer(model).load(str(html))


def test_weights_of_another_architecture_are_refused(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from vilseg_d2.engine import ViLSegCheckpointer

    path = tmp_path / "resnet18.pth"
    torch.save({"model": torchvision.models.resnet18().state_dict()}, path)
    model = build_model(tiny_cfg())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"None of the \d+ tensors of .*resnet18\.pth fits this ViLSeg .*'conv1\.weight'"
        r".*checkpoint of another architecture",
    ):
        ViLSegCheckpointer(model).load(str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    bare = tmp_path / "bare.pth"  # a bare state dict (no "model" key) is read the same way
    torch.save(torchvision.models.resnet18().state_dict(), bare)
    with pytest.raises(ValueError, match="another architecture"):
        ViLSegCheckpointer(model).load(str(bare))


def test_pickled_objects_are_refused_by_weights_only(tmp_path):
    from vilseg_d2.engine import ViLSegCheckpointer

    path = tmp_path / "objects.pth"
    torch.save({"model": {}, "config": logging.Formatter()}, path)  # any non-tensor Python object
    with pytest.raises(
        RuntimeError, match=r"objects\.pth holds Python objects besides tensors.*weights_only=True"
    ):
        ViLSegCheckpointer(build_model(tiny_cfg())).load(str(path))


def test_partly_fitting_weights_load_with_the_misfits_logged(tmp_path, caplog):
    from vilseg_d2.engine import ViLSegCheckpointer

    logging.getLogger("fvcore").addHandler(caplog.handler)
    try:
        src = build_model(tiny_cfg(MODEL__VILSEG__NUM_CLUSTERS=5))
        path = tmp_path / "c5.pth"
        torch.save({"model": src.state_dict()}, path)
        dst = build_model(tiny_cfg())
        ViLSegCheckpointer(dst).load(str(path))
    finally:
        logging.getLogger("fvcore").removeHandler(caplog.handler)
    assert "clustering_head.predictor.weight" in caplog.text
    assert torch.equal(
        dst.backbone.visual.positional_embedding, src.backbone.visual.positional_embedding
    )
