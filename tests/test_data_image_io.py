"""Decoding of training images and captions: every broken-record case of issue 7."""

import io

import numpy as np
import pytest
from PIL import Image

from vilseg_d2.data.image_io import decode_image, validate_caption
from vilseg_d2.data.skip_tracker import BadRecordError

from data_fixtures import jpeg_bytes, png_bytes, random_image


def test_jpeg_and_file_path(tmp_path):
    data = jpeg_bytes(40, 50)
    img = decode_image(data)
    assert img.shape == (40, 50, 3) and img.dtype == np.uint8
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert np.array_equal(decode_image(str(path)), img)


@pytest.mark.parametrize(
    "data, reason",
    [
        (jpeg_bytes()[:300], "truncated"),
        (b"", "zero bytes"),
        (b"<html>not an image</html>", "not an image"),
        (png_bytes(random_image())[:-40], "truncated"),
    ],
    ids=["truncated_jpeg", "zero_byte", "not_image", "truncated_png"],
)
def test_unreadable_images_raise(data, reason):
    with pytest.raises(BadRecordError, match=reason):
        decode_image(data)


def test_missing_file(tmp_path):
    with pytest.raises(BadRecordError, match="missing file"):
        decode_image(str(tmp_path / "nope.jpg"))


def test_png_with_alpha_composited_over_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 10, 10)
    rgba[0, 0, 3] = 255  # opaque
    rgba[0, 1, 3] = 0  # transparent
    rgba[0, 2, 3] = 128  # half
    img = decode_image(png_bytes(rgba, "RGBA"))
    assert img.shape == (4, 4, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (200, 10, 10)
    assert tuple(img[0, 1]) == (255, 255, 255)
    assert tuple(img[0, 2]) == tuple(
        np.rint(np.array([200, 10, 10]) * 128 / 255 + 255 * 127 / 255).astype(int)
    )


def test_palette_with_transparency():
    img = Image.new("P", (3, 2))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.info["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    out = decode_image(buf.getvalue())
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[0, 1]) == (255, 255, 255)


def test_grayscale_replicated():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = decode_image(png_bytes(gray, "L"))
    assert out.shape == (3, 4, 3)
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)


def test_16bit_grayscale_scaled_not_clipped():
    g16 = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    import cv2

    ok, enc = cv2.imencode(".png", g16)
    out = decode_image(enc.tobytes())
    assert out.dtype == np.uint8
    assert list(out[0, :, 0]) == [0, 4, 128, 255]  # scaled by 255/65535, not clipped to 255


def test_16bit_rgb_scaled():
    import cv2

    bgr16 = np.zeros((2, 2, 3), np.uint16)
    bgr16[..., 2] = 65535  # red in OpenCV's BGR
    bgr16[..., 1] = 32896  # half green
    ok, enc = cv2.imencode(".png", bgr16)
    out = decode_image(enc.tobytes())
    assert tuple(out[0, 0]) == (255, 128, 0)


def test_exif_orientation_applied():
    img = Image.fromarray(random_image(10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).shape == (20, 10, 3)


def test_draft_keeps_min_size():
    data = jpeg_bytes(800, 1000)
    out = decode_image(data, min_size=300)
    assert min(out.shape[:2]) >= 300 and out.shape[0] < 800


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("  a cat on a mat \n", "a cat on a mat"),
        ("un chat \u00e9tonn\u00e9".encode(), "un chat \u00e9tonn\u00e9"),
    ],
)
def test_valid_captions(caption, expected):
    assert validate_caption(caption) == expected


def test_long_caption_kept_whole():
    long = "word " * 2000
    assert len(validate_caption(long)) == len(long.strip()) == 9999


@pytest.mark.parametrize(
    "caption, reason",
    [
        ("", "empty"),
        (" \t\n ", "empty"),
        (b"\xff\xfe\x81", "not UTF-8"),
        ("abc\x00def", "NUL"),
        (None, "not text"),
        (42, "not text"),
        (["a"], "not text"),
    ],
)
def test_bad_captions(caption, reason):
    with pytest.raises(BadRecordError, match=reason):
        validate_caption(caption)
