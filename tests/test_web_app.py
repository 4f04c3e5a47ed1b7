"""The web demo's segmentation in process (vilseg_d2.app): for the same image and vocabulary the
overlay, the cluster map and the shares of tools/demo.py, with the config's settings and with
others; every bad input a message (the text the page shows), the server's state unharmed."""

import html
import io

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from vilseg_d2.app import InputLimits, read_image, read_vocabulary
from vilseg_d2.app.cli import load_web_segmenter
from vilseg_d2.app.page import segment_request
from vilseg_d2.data.synthetic import validation_sample
from vilseg_d2.errors import UserError

from helpers import TINY_CONFIG, load_script
from web_app_fixtures import VOCABULARY, app_opts, bad_files, write_images, write_weights

DENSE_UNREFINED = {"mode": "dense", "refine": False, "bg_threshold": 0.0,
                   "bg_global_similarity": 0.0}  # fmt: skip
DENSE_UNREFINED_OPTS = ["MODEL.VILSEG.INFERENCE_MODE", "dense", "MODEL.VILSEG.REFINE_ITERS", "0",
                        "MODEL.VILSEG.BG_THRESHOLD", "0.0",
                        "MODEL.VILSEG.BG_GLOBAL_SIMILARITY", "0.0"]  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def web(weights):
    return load_web_segmenter(TINY_CONFIG, app_opts(weights))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


def request(web, path, vocabulary=VOCABULARY, **settings):
    return segment_request(web, {"path": str(path)}, vocabulary, **settings)


def message_of(web, image, vocabulary=VOCABULARY, **settings) -> str:
    """The message the page shows for a request that cannot be segmented."""
    with pytest.raises(gr.Error) as e:
        segment_request(web, image, vocabulary, **settings)
    return e.value.message


@pytest.mark.parametrize(
    "settings, opts", [({}, []), (DENSE_UNREFINED, DENSE_UNREFINED_OPTS)], ids=["config", "dense"]
)
def test_app_gives_what_tools_demo_gives(web, weights, images, tmp_path, settings, opts):
    demo = load_script("tools/demo.py", "vilseg_demo_for_web_app")
    out = tmp_path / "demo"
    folder = str(images["scene"].parent)
    expected = demo.main(["--config-file", TINY_CONFIG, "--input", folder,
                          "--output", str(out), "--vocabulary", VOCABULARY,
                          "--opts", *app_opts(weights), *opts])  # fmt: skip
    assert len(expected) == len(images) == 3
    for name, path in images.items():
        overlay, shares, clusters, legend, summary = request(web, path, **settings)
        with Image.open(out / f"{name}.png") as picture:
            _, demo_overlay, demo_clusters = np.split(np.asarray(picture.convert("RGB")), 3, axis=1)
        np.testing.assert_array_equal(overlay, demo_overlay, err_msg=name)
        np.testing.assert_array_equal(clusters, demo_clusters, err_msg=name)
        assert shares == expected[str(path)], name
        for cls in shares:  # the legend names every class found, with its share
            assert f"{html.escape(cls)}</td>" in legend and f"{100 * shares[cls]:.1f}%" in legend
        assert "Segmented" in summary and " s**" in summary
    # several classes somewhere, "background" where the rules are on: the comparison means something
    assert max(len(s) for s in expected.values()) >= 3
    assert any("background" in s for s in expected.values()) == (not settings)
    # the model is left with the config's settings
    model = web.predictor.model
    assert (model.inference_mode, model.refine_iters, model.bg_threshold) == ("online", 10, 0.4)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "The file is empty (0 bytes): upload an image (PNG, JPEG, WebP, BMP, GIF or "
                  "TIFF)."),
        ("text", "Cannot read the file as an image (not an image (unidentified format)): upload "
                 "an image (PNG, JPEG, WebP, BMP, GIF or TIFF)."),
        ("truncated", "Cannot read the file as an image (corrupt or truncated image: "),
        ("huge_20000", "The image is too large: 400,000,000 pixels. This app reads images of up "
                       "to 40 megapixels (e.g. 8000 x 5000); downscale it first."),
        ("huge_9000", "The image is too large: 9000 x 9000 pixels. This app reads images of up "
                      "to 40 megapixels"),
    ],
)  # fmt: skip
def test_a_file_that_is_no_image_is_a_message(web, tmp_path, kind, message):
    path = bad_files(tmp_path)[kind]
    assert message_of(web, {"path": str(path)}).startswith(message)


def test_no_image_and_bad_settings_are_a_message(web, images):
    image = {"path": str(images["scene"])}
    assert message_of(web, None).startswith("No image: upload one (PNG, JPEG")
    assert message_of(web, image, mode="kmeans_dataset") == (
        "Unknown inference mode 'kmeans_dataset': choose one of online, kmeans, dense."
    )
    assert message_of(web, image, bg_threshold=1.5) == (
        "bg_threshold must be a number from 0 to 1 (0: off), got 1.5."
    )
    assert message_of(web, image, bg_global_similarity="high").startswith(
        "bg_global_similarity must be a number from 0 to 1"
    )
    assert message_of(web, image, refine="yes") == "refine must be true or false, got 'yes'."


@pytest.mark.parametrize(
    "vocabulary, message",
    [
        ("", "The vocabulary is empty: give at least one class name, e.g. 'cat; dog'"),
        (" ; \n ;", "The vocabulary is empty"),
        (None, "The vocabulary is empty"),
        ("; ".join(f"class {k}" for k in range(1000)),
         "The vocabulary has 1000 classes; this app segments with up to 256 at a time"),
        ("star; circle; Star ", "The vocabulary names these classes more than once: "
                                "['Star', 'star']. Give each class once"),
        ("caf\u00e9; cafe\u0301", "The vocabulary names these classes more than once: "
                                  "['caf\u00e9']"),  # one word, typed two ways
        ("star; , ,", "The vocabulary has classes without a name: [', ,']"),
        ("x" * 20001, "The vocabulary is too long: 20,001 characters; this app takes up to "
                      "20,000."),
        ("<b>a</b>; <B>A</B>", "more than once: ['&lt;B&gt;A&lt;/B&gt;', '&lt;b&gt;a&lt;/b&gt;']"),
    ],
    ids=["empty", "blank", "none", "1000", "duplicates", "unicode-duplicates", "commas",
         "too-long", "html"],
)  # fmt: skip
def test_a_bad_vocabulary_is_a_message(web, images, vocabulary, message):
    assert message in message_of(web, {"path": str(images["scene"])}, vocabulary)


def test_unicode_emoji_and_markup_class_names_are_segmented(web, images):
    names = ["chat \U0001f431 \u732b", "caf\u00e9, Stra\u00dfe", "<img src=x onerror=alert(1)>"]
    overlay, shares, _, legend, summary = request(
        web, images["scene"], "; ".join(names), bg_threshold=0.0, bg_global_similarity=0.0
    )
    assert overlay.dtype == np.uint8 and overlay.shape == (384, 384, 3)
    assert set(shares) <= set(names) and sum(shares.values()) == pytest.approx(1, abs=1e-4)
    assert "<img" not in legend and "&lt;img src=x onerror=alert(1)&gt;" in legend
    # one class alone covers the image, its name drawn: the font has no cat (emoji or kanji)
    _, shares, _, legend, summary = request(web, images["scene"], names[0], bg_threshold=0.0,
                                            bg_global_similarity=0.0)  # fmt: skip
    assert shares == {names[0]: 1.0} and "chat \U0001f431 \u732b</td>" in legend
    assert "not in the drawing font: they show as boxes on the overlay" in summary


def test_a_large_image_is_downscaled_with_a_note(web, tmp_path):
    path = tmp_path / "large.png"
    image = validation_sample(1).image
    Image.fromarray(image).resize((1500, 1100), Image.NEAREST).save(path)
    with pytest.warns(UserWarning, match=r"\(1500 x 1100\) is larger than 1024 pixels a side"):
        overlay, shares, _, _, summary = request(web, path)
    # to the size the model reads (INPUT.MIN_SIZE_TEST 128), drawn enlarged three times
    assert "downscaled to 175 x 128, the size the model reads it at" in summary
    assert overlay.shape == (384, 525, 3) and shares


def test_limits_are_checked_before_decoding():
    limits = InputLimits(max_pixels=100, max_side=8, max_classes=2, max_bytes=10_000)
    tiny = Image.new("RGB", (12, 9), (10, 200, 30))
    data = tiny.tobytes()  # raw pixels: no image format
    with pytest.raises(UserError, match="not an image"):
        read_image(data, limits=limits, test_size=(4, 6))
    buf = io.BytesIO()
    tiny.save(buf, format="PNG")
    with pytest.raises(UserError, match=r"too large: 12 x 9 pixels.*up to 0.0001 megapixels"):
        read_image(buf.getvalue(), limits=limits, test_size=(4, 6))
    small = InputLimits(max_pixels=1000, max_side=8, max_classes=2, max_bytes=10_000)
    rgb, notes = read_image(buf.getvalue(), limits=small, test_size=(4, 6))
    assert rgb.shape == (4, 5, 3) and (rgb == [10, 200, 30]).all() and "to 5 x 4" in notes[0]
    with pytest.raises(UserError, match="The file is too large"):
        read_image(b"x" * 200, limits=InputLimits(max_bytes=100), test_size=(4, 6))
    assert read_vocabulary("a; b, c", limits=limits) == ["a", "b, c"]
    with pytest.raises(UserError, match="3 classes; this app segments with up to 2"):
        read_vocabulary("a; b; c", limits=limits)
