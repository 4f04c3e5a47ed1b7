"""ViLSegCaptionDatasetMapper: shapes, dtypes, channel order, g(x) and its flip."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from vilseg_d2.config import add_vilseg_config
from vilseg_d2.data import BadRecordError, ViLSegCaptionDatasetMapper

from data_fixtures import jpeg_bytes, png_bytes, random_image


def _mapper(**kw):
    args = dict(
        global_size=64, global_scale=(0.4, 1.0), num_local_crops=6, local_size=32,
        local_scale=(0.05, 0.4), color_mul=0.2, color_add=0.1, flip_prob=0.5, image_format="BGR",
    )  # fmt: skip
    args.update(kw)
    return ViLSegCaptionDatasetMapper(**args)


def _recolouring_mapper(fmt, view):
    """A mapper whose ``view`` ("local" or "global") is the whole 60 px image, recoloured."""
    settings = {"scale": (1.0, 1.0), "size": 60, "color_mul": 0.8, "color_add": 0.3}
    return _mapper(image_format=fmt, **{f"{view}_{k}": v for k, v in settings.items()})


@pytest.fixture(autouse=True)
def _np_seed():
    np.random.seed(0)


def test_from_config_default_sizes():
    cfg = get_cfg()
    add_vilseg_config(cfg)
    mapper = ViLSegCaptionDatasetMapper(cfg, True)
    out = mapper({"image_bytes": jpeg_bytes(150, 200), "caption": "a cat"})
    v = cfg.INPUT.VILSEG
    assert out["image"].shape == (3, v.GLOBAL_SIZE, v.GLOBAL_SIZE)
    assert len(out["local_crops"]) == v.NUM_LOCAL_CROPS == 6
    assert all(c.shape == (3, v.LOCAL_SIZE, v.LOCAL_SIZE) for c in out["local_crops"])


def test_output_shapes_and_types(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg_bytes(80, 120))
    out = _mapper()({"file_name": str(path), "caption": " two dogs "})
    assert set(out) == {"image", "local_crops", "transformed_image", "flip", "caption"}
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 64)
    assert out["transformed_image"].dtype == torch.uint8
    assert out["transformed_image"].shape == out["image"].shape
    assert len(out["local_crops"]) == 6
    for crop in out["local_crops"]:
        assert crop.dtype == torch.uint8 and crop.shape == (3, 32, 32) and crop.is_contiguous()
    assert isinstance(out["flip"], bool)
    assert out["caption"] == "two dogs"


@pytest.mark.parametrize("fmt, channel", [("RGB", 0), ("BGR", 2)])
def test_channel_order_follows_input_format(fmt, channel):
    red = np.zeros((40, 40, 3), np.uint8)
    red[..., 0] = 255  # pure red, RGB
    out = _mapper(image_format=fmt, color_mul=0, color_add=0)(
        {"image_bytes": png_bytes(red), "caption": "red"}
    )
    for t in [out["image"], out["transformed_image"], *out["local_crops"]]:
        assert (t[channel] == 255).all() and (t.sum(0) == 255).all()


def test_undoing_the_flip_restores_the_layout():
    data = png_bytes(random_image(60, 90, seed=3))
    mapper = _mapper(color_mul=0.0, color_add=0.0, flip_prob=1.0)
    out = mapper({"image_bytes": data, "caption": "x"})
    assert out["flip"] is True
    assert not torch.equal(out["transformed_image"], out["image"])
    assert torch.equal(out["transformed_image"].flip(-1), out["image"])  # g^-1 on the geometry

    out = _mapper(color_mul=0.0, color_add=0.0, flip_prob=0.0)(
        {"image_bytes": data, "caption": "x"}
    )
    assert out["flip"] is False and torch.equal(out["transformed_image"], out["image"])


def test_colour_change_is_a_per_channel_affine_map():
    data = png_bytes(random_image(60, 90, seed=4))
    flips = []
    for _ in range(20):
        out = _mapper(color_mul=0.3, color_add=0.1, flip_prob=0.5)(
            {"image_bytes": data, "caption": "x"}
        )
        flips.append(out["flip"])
        tf = out["transformed_image"].flip(-1) if out["flip"] else out["transformed_image"]
        x, y = out["image"].double(), tf.double()
        assert not torch.equal(x, y)
        for c in range(3):
            keep = (y[c] > 0) & (y[c] < 255)  # unclipped pixels
            xc, yc = x[c][keep], y[c][keep]
            slope, offset = np.polyfit(xc.numpy(), yc.numpy(), 1)
            assert 0.7 - 1e-3 <= slope <= 1.3 + 1e-3 and abs(offset) <= 0.1 * 255 + 2
            assert (yc - (slope * xc + offset)).abs().max() <= 1.0  # exact up to rounding
    assert any(flips) and not all(flips)


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_local_crops_recoloured_and_grayscale(fmt):
    data = png_bytes(random_image(60, 90, seed=5))
    plain = _mapper(
        image_format=fmt, local_scale=(1.0, 1.0), local_size=60
    )  # whole image: crops comparable
    always_gray = _mapper(
        image_format=fmt, local_scale=(1.0, 1.0), local_size=60, local_grayscale_prob=1.0
    )
    np.random.seed(1)
    ref = plain({"image_bytes": data, "caption": "x"})["local_crops"][0].double()
    np.random.seed(1)
    gray = always_gray({"image_bytes": data, "caption": "x"})
    for crop in gray["local_crops"]:
        assert torch.equal(crop[0], crop[1]) and torch.equal(crop[1], crop[2])
    rgb = ref if fmt == "RGB" else ref.flip(0)
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    assert (gray["local_crops"][0][0].double() - luma).abs().max() <= 1.0
    assert not torch.equal(gray["image"][0], gray["image"][1])  # the global view keeps its colours

    coloured = _recolouring_mapper(fmt, "local")
    crops = coloured({"image_bytes": data, "caption": "x"})["local_crops"]
    assert all(
        not torch.equal(c.double(), ref) for c in crops
    )  # the same whole-image crop, recoloured
    assert not torch.equal(crops[0], crops[1])  # drawn per crop
    with pytest.raises(ValueError, match="prob"):
        _mapper(local_grayscale_prob=1.5)


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_global_view_recoloured_and_grayscale(fmt):
    data = png_bytes(random_image(60, 90, seed=5))
    plain = _mapper(image_format=fmt, global_scale=(1.0, 1.0), global_size=60)
    np.random.seed(2)
    ref = plain({"image_bytes": data, "caption": "x"})
    gray = _mapper(
        image_format=fmt, global_scale=(1.0, 1.0), global_size=60, global_grayscale_prob=1.0
    )
    np.random.seed(2)
    out = gray({"image_bytes": data, "caption": "x"})
    assert torch.equal(out["image"][0], out["image"][1]) and torch.equal(
        out["image"][1], out["image"][2]
    )
    rgb = ref["image"].double() if fmt == "RGB" else ref["image"].double().flip(0)
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    assert (out["image"][0].double() - luma).abs().max() <= 1.0
    assert all(
        torch.equal(a, b) for a, b in zip(out["local_crops"], ref["local_crops"])
    )  # local crops as before
    # g(x) is made from the recoloured view: only its own colour change and flip separate them.
    tf = out["transformed_image"].double()
    tf = tf.flip(-1) if out["flip"] else tf
    assert np.corrcoef(tf[0].flatten(), out["image"][0].double().flatten())[0, 1] > 0.9

    coloured = _recolouring_mapper(fmt, "global")
    views = [coloured({"image_bytes": data, "caption": "x"})["image"] for _ in range(2)]
    assert all(not torch.equal(v, ref["image"]) for v in views) and not torch.equal(
        views[0], views[1]
    )


def test_captions_list_draws_one():
    mapper = _mapper()
    captions = ["one", "two", "three"]
    seen = {
        mapper({"image_bytes": jpeg_bytes(), "captions": captions})["caption"] for _ in range(30)
    }
    assert seen == set(captions)


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"image_bytes": jpeg_bytes(), "caption": "  "}, "empty caption"),
        ({"image_bytes": jpeg_bytes()}, "no caption"),
        ({"caption": "a cat"}, "no image"),
        ({"image_bytes": b"", "caption": "a cat"}, "zero bytes"),
        ({"file_name": "/nonexistent/x.jpg", "caption": "a cat"}, "missing file"),
        ({"image_bytes": jpeg_bytes(), "captions": []}, "no caption"),
    ],
)
def test_bad_records_raise(record, reason):
    with pytest.raises(BadRecordError, match=reason):
        _mapper()(record)


def test_tiny_and_odd_images():
    for h, w in [(1, 1), (3, 200), (200, 3)]:
        out = _mapper()({"image_bytes": png_bytes(random_image(h, w)), "caption": "x"})
        assert out["image"].shape == (3, 64, 64)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="FORMAT"):
        _mapper(image_format="YUV-BT.601")
    with pytest.raises(ValueError, match="scale"):
        _mapper(global_scale=(0.0, 1.0))


def test_random_resized_crop_scales_and_coords():
    from vilseg_d2.data.transforms import CropResizeTransform, RandomResizedCrop

    img = random_image(90, 120)
    aug = RandomResizedCrop(24, scale=(0.05, 0.4))
    for _ in range(50):
        t = aug.get_transform(img)
        assert isinstance(t, CropResizeTransform)
        assert 0.05 * 0.9 <= t.w * t.h / (90 * 120) <= 0.4 * 1.1
        assert 3 / 4 * 0.9 <= t.w / t.h <= 4 / 3 * 1.1
        assert 0 <= t.x0 and t.x0 + t.w <= 120 and 0 <= t.y0 and t.y0 + t.h <= 90
        assert t.apply_image(img).shape == (24, 24, 3)
    t = CropResizeTransform(10, 20, 40, 30, 60, 80)
    assert np.allclose(t.apply_coords(np.array([[10.0, 20.0], [50.0, 50.0]])), [[0, 0], [80, 60]])
    seg = np.zeros((90, 120), np.uint8)
    seg[20:35, 10:50] = 7
    out = t.apply_segmentation(seg)
    assert out.shape == (60, 80) and set(np.unique(out)) == {0, 7}  # nearest: no new labels
    # A strip too thin for the ratio range falls back to a centred crop.
    thin = random_image(4, 400)
    t = RandomResizedCrop(16, scale=(0.9, 1.0)).get_transform(thin)
    assert t.h == 4 and t.w == round(4 * 4 / 3)


def test_views_left_out_for_steps_without_the_auxiliary_objectives():
    cfg = get_cfg()
    add_vilseg_config(cfg)
    record = {"image_bytes": jpeg_bytes(150, 200), "caption": "a cat"}
    out = ViLSegCaptionDatasetMapper(cfg, True, local_crops=False, transformed_view=False)(record)
    assert set(out) == {"image", "local_crops", "caption"} and out["local_crops"] == []
    out = ViLSegCaptionDatasetMapper(cfg, True, transformed_view=False)(record)
    assert (
        len(out["local_crops"]) == cfg.INPUT.VILSEG.NUM_LOCAL_CROPS
        and "transformed_image" not in out
    )


def test_training_views_follow_the_auxiliary_warmup_and_weights():
    from vilseg_d2.engine import training_views

    cfg = get_cfg()
    add_vilseg_config(cfg)
    cfg.MODEL.VILSEG.AUX_WARMUP_ITERS = (5, 8)
    assert training_views(cfg, 4) == {"local_crops": False, "transformed_view": False}
    assert training_views(cfg, 5) == {"local_crops": True, "transformed_view": True}
    cfg.MODEL.VILSEG.VISION_WEIGHT = 0.0  # the no-L_vision ablation never needs local crops
    assert training_views(cfg, 100) == {"local_crops": False, "transformed_view": True}
