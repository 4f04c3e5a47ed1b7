"""Unusual inference inputs (issue 7), through the model API and through tools/demo.py: each
gives a correct result (right size, class probabilities) or an error saying what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from vilseg_d2.errors import UserError

from helpers import TINY_CONFIG, load_script, tiny_cfg

VOCAB = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def model():
    m = build_model(tiny_cfg())
    m.eval()
    return m


def segment(model, image, **extra) -> dict:
    return model([{"image": image, "vocabulary": VOCAB, **extra}])[0]


def assert_probabilities(out: dict, height: int, width: int, k: int = len(VOCAB)) -> None:
    assert out["sem_seg"].shape == (k, height, width)
    assert out["clusters"].shape == (height, width)
    assert torch.isfinite(out["sem_seg"]).all() and (out["sem_seg"] >= 0).all()
    torch.testing.assert_close(out["sem_seg"].sum(0), torch.ones(height, width))


def random_uint8(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


# ------------------------------------------------------------------------------ model API


def test_grayscale_tensor_is_the_image_repeated_on_3_channels(model):
    gray = random_uint8(40, 50)
    expected = segment(model, gray[None].expand(3, -1, -1).contiguous())
    for image in (gray, gray[None]):  # H x W and 1 x H x W
        out = segment(model, image)
        assert_probabilities(out, 40, 50)
        torch.testing.assert_close(out["sem_seg"], expected["sem_seg"])


def test_16_bit_tensor_is_scaled_to_8_bits(model):
    image8 = random_uint8(3, 40, 50)
    expected = segment(model, image8)
    out = segment(model, image8.to(torch.int32).mul(257).to(torch.uint16))
    assert_probabilities(out, 40, 50)
    torch.testing.assert_close(out["sem_seg"], expected["sem_seg"])
    with pytest.raises(
        ValueError,
        match=(
            r"values up to 65535; the model takes 0-255 .*\(divide by 257\) "
            r"or pass it as a torch.uint16"
        ),
    ):
        segment(model, image8.to(torch.int32) * 257)  # 16-bit values in an int32 tensor: ambiguous


def test_rgba_and_channels_last_are_clear_errors(model):
    with pytest.raises(
        ValueError, match=r"got shape \(4, 40, 50\)\. Remove the alpha channel first"
    ):
        segment(model, random_uint8(4, 40, 50))
    with pytest.raises(
        ValueError, match=r"got shape \(40, 50, 3\)\. It looks channels-last .*permute\(2, 0, 1\)"
    ):
        segment(model, random_uint8(40, 50, 3))
    with pytest.raises(ValueError, match=r"'image' is empty"):
        segment(model, random_uint8(3, 0, 50))


@pytest.mark.parametrize("mode", ["online", "kmeans", "dense"])
def test_image_smaller_than_a_patch_gives_a_result_of_its_size(model, mode):
    assert model.backbone.size_divisibility > 7
    model.inference_mode = mode
    try:
        out = segment(model, random_uint8(3, 5, 7))
    finally:
        model.inference_mode = "online"
    assert_probabilities(out, 5, 7)
    out = segment(model, random_uint8(3, 5, 7), height=50, width=70)  # resized to the asked size
    assert_probabilities(out, 50, 70)


def test_very_wide_image_with_sliding_windows(model):
    image = random_uint8(3, 64, 1500)
    whole = segment(model, image)
    assert_probabilities(whole, 64, 1500)
    model.sliding_window_size, model.sliding_window_stride = 128, 96
    try:
        out = segment(model, image)
        first_window = segment(model, image[:, :, :128])  # covered by no other window up to x=96
    finally:
        model.sliding_window_size, model.sliding_window_stride = 0, 0
    assert_probabilities(out, 64, 1500)
    torch.testing.assert_close(out["sem_seg"][:, :, :96], first_window["sem_seg"][:, :, :96])


def test_duplicate_class_names_are_a_clear_error(model):
    image = random_uint8(3, 32, 32)
    with pytest.raises(
        ValueError, match=r"names these classes more than once: \['Star', 'star '\].*'cat, kitten'"
    ):
        model([{"image": image, "vocabulary": ["circle", "star ", "Star"]}])
    # synonyms: one class
    out = model([{"image": image, "vocabulary": ["circle", "star, pentagram"]}])[0]
    assert_probabilities(out, 32, 32, k=2)


# ------------------------------------------------------------------------------ tools/demo.py


def load_demo():
    return load_script("tools/demo.py", "vilseg_demo_tool")


def demo_argv(inputs, out_dir, *, vocabulary: str | None = "circle; square; star",
              vocabulary_file=None, opts=(), weights=("--random-weights",)):  # fmt: skip
    argv = [
        "--config-file",
        TINY_CONFIG,
        "--input",
        *map(str, inputs),
        "--output",
        str(out_dir),
        *weights,
    ]
    argv += (
        ["--vocabulary", vocabulary]
        if vocabulary_file is None
        else ["--vocabulary-file", str(vocabulary_file)]
    )
    # the background rules off unless a test sets them: every class is then matched by its text
    rules = ["MODEL.VILSEG.BG_THRESHOLD", "0.0", "MODEL.VILSEG.BG_GLOBAL_SIMILARITY", "0.0"]
    return argv + ["--opts", "MODEL.DEVICE", "cpu", *rules, *opts]


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> dict:
    """PNG files of the modes and sizes a user's folder holds."""
    root = tmp_path_factory.mktemp("odd_images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    files = {
        "gray": Image.fromarray(rgb[..., 0], mode="L"),
        "rgba": Image.fromarray(
            np.dstack([rgb, rng.integers(0, 256, (48, 64), dtype=np.uint8)]), mode="RGBA"
        ),
        "gray16": Image.fromarray(
            (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
        ),
        "tiny_5x7": Image.fromarray(rgb[:5, :7]),
        "wide_64x1500": Image.fromarray(np.tile(rgb[:, :60], (2, 25, 1))[:64, :1500]),
    }
    paths = {}
    for name, img in files.items():
        paths[name] = root / f"{name}.png"
        img.save(paths[name])
    (root / "not_an_image.png").write_bytes(b"<html>404</html>")
    paths["broken"] = root / "not_an_image.png"
    return paths


def test_demo_segments_every_mode_and_size(odd_images, tmp_path, capsys, monkeypatch):
    demo = load_demo()
    seen = []  # the BGR images the demo hands to the predictor
    real_call = demo.ViLSegPredictor.__call__
    monkeypatch.setattr(
        demo.ViLSegPredictor, "__call__", lambda self, bgr: seen.append(bgr) or real_call(self, bgr)
    )
    order = ["gray", "rgba", "gray16", "tiny_5x7", "wide_64x1500", "broken"]
    out = tmp_path / "out"
    shares = demo.main(
        demo_argv(
            [odd_images[k] for k in order], out, opts=["MODEL.VILSEG.SLIDING_WINDOW_SIZE", "128"]
        )
    )

    gray, rgba, gray16 = seen[:3]
    assert gray.shape == (48, 64, 3) and (gray == gray[..., :1]).all()
    raw16 = np.asarray(Image.open(odd_images["gray16"])).astype(np.float64)
    assert raw16.max() > 255  # really 16-bit data: scaled to 8 bits, not clipped to white
    np.testing.assert_array_equal(
        gray16, np.repeat(np.rint(raw16 / 257).astype(np.uint8)[..., None], 3, 2)
    )
    src = np.asarray(Image.open(odd_images["rgba"])).astype(np.float64)
    alpha = src[..., 3:] / 255  # composited over white
    np.testing.assert_array_equal(
        rgba[..., ::-1], np.rint(src[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    )
    assert sorted(shares) == sorted(str(odd_images[k]) for k in order if k != "broken")
    for name in order[:-1]:
        s = shares[str(odd_images[name])]
        assert set(s) <= {"circle", "square", "star"} and sum(s.values()) == pytest.approx(
            1, abs=1e-4
        )
        with Image.open(out / f"{name}.png") as picture, Image.open(odd_images[name]) as src:
            # input | overlay | clusters, enlarged by a whole factor until the shorter side is
            # >= 384
            factor = max(1, -(-384 // min(src.size)))
            assert picture.size == (3 * factor * src.size[0], factor * src.size[1]), name
            panels = np.split(np.asarray(picture.convert("RGB")), 3, axis=1)
        assert not np.array_equal(panels[0], panels[1]) and not np.array_equal(
            panels[0], panels[2]
        ), name
    assert json.loads((out / "shares.json").read_text()) == shares
    err = capsys.readouterr().err
    assert (
        "skipped " + str(odd_images["broken"]) + ": cannot read it as an image (not an image" in err
    )


def test_demo_vocabulary_errors_say_what_to_fix(odd_images, tmp_path):
    demo = load_demo()
    image = [odd_images["gray"]]
    with pytest.raises(UserError, match=r"more than once: \['Star', 'star'\]"):
        demo.main(demo_argv(image, tmp_path, vocabulary="star; circle; Star"))
    latin1 = tmp_path / "classes_latin1.txt"
    latin1.write_bytes("caf\xe9\nd\xe9j\xe0 vu\n".encode("latin-1"))
    with pytest.raises(
        UserError, match=r"classes_latin1\.txt is not UTF-8 text .*save it as UTF-8"
    ):
        demo.main(demo_argv(image, tmp_path, vocabulary_file=latin1))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n ; \n")
    with pytest.raises(UserError, match="The vocabulary is empty"):
        demo.main(demo_argv(image, tmp_path, vocabulary_file=blank))
    bom = tmp_path / "classes_bom.txt"  # UTF-8 with a byte-order mark (Windows editors): fine
    bom.write_bytes("\ufeffcircle\nsquare\n".encode("utf-8"))
    shares = demo.main(demo_argv(image, tmp_path / "bom", vocabulary_file=bom))
    assert set(next(iter(shares.values()))) <= {"circle", "square"}


def test_demo_with_truncated_weights_names_the_file(odd_images, tmp_path):
    from vilseg_d2.engine import ViLSegCheckpointer

    ViLSegCheckpointer(build_model(tiny_cfg()), str(tmp_path)).save("model_final")
    data = (tmp_path / "model_final.pth").read_bytes()
    cut = tmp_path / "half.pth"
    cut.write_bytes(data[: len(data) // 2])
    demo = load_demo()
    with pytest.raises(RuntimeError, match=r"Cannot read checkpoint .*half\.pth: it is truncated"):
        demo.main(
            demo_argv([odd_images["gray"]], tmp_path / "out", opts=["MODEL.WEIGHTS", str(cut)])
        )


def test_demo_refuses_untrained_weights_unless_asked(odd_images, tmp_path, caplog):
    demo = load_demo()
    with pytest.raises(UserError, match=r"No trained weights: pass --opts MODEL.WEIGHTS"):
        demo.main(demo_argv([odd_images["gray"]], tmp_path, weights=()))
    with caplog.at_level("INFO"):
        demo.main(demo_argv([odd_images["gray"]], tmp_path))
    assert "Weights: none, an untrained model (--random-weights)" in caplog.text


def test_demo_adds_the_background_class_the_rules_assign(odd_images, tmp_path, caplog):
    demo = load_demo()
    with caplog.at_level("INFO"):
        shares = demo.main(demo_argv([odd_images["gray"]], tmp_path, vocabulary="star; circle",
                                     opts=["MODEL.VILSEG.BG_THRESHOLD", "0.99"]))  # fmt: skip
    assert "added the class 'background'" in caplog.text
    share = next(iter(shares.values()))
    # 2 named classes of an untrained model: no probability reaches 0.99, all is background,
    # not "star"
    assert share == {"background": pytest.approx(1.0)}
