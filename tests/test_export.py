"""Deployment: the ONNX graph of tools/export_model.py in onnxruntime against the PyTorch model
(online and dense, refined and not, several image sizes), TorchScript, the export's errors, and
tools/deploy/segment_onnx.py run with torch unimportable, against tools/demo.py."""

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime
import PIL
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from vilseg_d2.data.image_io import decode_image
from vilseg_d2.engine import ViLSegCheckpointer, ViLSegPredictor
from vilseg_d2.errors import UserError
from vilseg_d2.export import ExportableViLSeg, export_onnx, export_torchscript

from helpers import ROOT, TINY_CONFIG, load_script, tiny_cfg

# The background class is not first: the output is put back in the vocabulary's order.
VOCAB = ["circle", "background", "star, pentagram", "square"]
# Rules under which the untrained tiny model (seed 0) gives every case several classes.
RULES = {"MODEL__VILSEG__BG_THRESHOLD": 0.4, "MODEL__VILSEG__BG_GLOBAL_SIMILARITY": 0.97}
RULE_OPTS = ["MODEL.VILSEG.BG_THRESHOLD", "0.4", "MODEL.VILSEG.BG_GLOBAL_SIMILARITY", "0.97"]
# (input H, W), (output height, width): patch multiples, and one padded and resized
SIZES = [((64, 64), (64, 64)), ((96, 128), (96, 128)), ((50, 70), (80, 90))]
CASES = [("online", 0), ("online", 3), ("dense", 0), ("dense", 3)]  # (mode, refinement steps)
RUNTIME = os.path.join(ROOT, "tools", "deploy", "segment_onnx.py")
# Run the runtime with torch (and Detectron2, vilseg_d2, PIL) unimportable; report what got in.
NO_TORCH = """
import runpy, sys
BLOCKED = ("torch", "detectron2", "vilseg_d2", "PIL")
for name in BLOCKED:
    sys.modules[name] = None
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None]
    print("LOADED", loaded)
"""


def scene(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """3 x H x W float 0-255: an orange rectangle and a blue disc on a noisy colour ramp."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None]
    flat = torch.full((height, width), 120.0)
    image = torch.stack(
        [60 + 80 * x.expand(height, width), 90 + 60 * y.expand(height, width), flat]
    )
    image = image + 12 * torch.randn(3, height, width, generator=g)
    orange = torch.tensor([230.0, 120, 30]).view(3, 1, 1)
    image[:, height // 8 : height // 2, width // 8 : width // 2] = orange
    disc = (y - 0.7) ** 2 + (x - 0.7) ** 2 < 0.04
    image[:, disc] = torch.tensor([40.0, 60, 220]).view(3, 1)
    return image.clamp(0, 255)


def set_inference(model, mode: str, refine: int) -> None:
    model.inference_mode, model.refine_iters = mode, refine


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg(**RULES)).eval()


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-refine{r}" for m, r in CASES])
def exported(request, model, tmp_path_factory):
    mode, refine = request.param
    set_inference(model, mode, refine)
    path = str(tmp_path_factory.mktemp("onnx") / "model.onnx")
    export_onnx(ExportableViLSeg(model, VOCAB).eval(), path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return mode, refine, session


@pytest.mark.parametrize("sizes", SIZES, ids=[f"{s[0][0]}x{s[0][1]}" for s in SIZES])
def test_onnx_graph_matches_pytorch(model, exported, sizes):
    mode, refine, session = exported
    (H, W), (height, width) = sizes
    image = scene(H, W)
    set_inference(model, mode, refine)
    with torch.no_grad():
        ref = model([{"image": image, "height": height, "width": width, "vocabulary": VOCAB}])[0]
    inputs = {"image": image[None].numpy(), "output_size": np.array([height, width])}
    scores, clusters = session.run(["sem_seg", "clusters"], inputs)
    assert scores.shape == (len(VOCAB), height, width) and clusters.shape == (height, width)
    assert clusters.dtype == np.int64
    expected = ref["sem_seg"]
    labels = expected.argmax(0)
    assert len(labels.unique()) >= 2  # several classes: the comparison means something
    torch.testing.assert_close(torch.from_numpy(scores), expected, rtol=1e-3, atol=1e-5)
    agree = (torch.from_numpy(scores.argmax(0)) == labels).float().mean().item()
    same_clusters = (torch.from_numpy(clusters) == ref["clusters"]).float().mean().item()
    assert agree >= 0.999 and same_clusters >= 0.999, (agree, same_clusters)
    diff = (torch.from_numpy(scores) - expected).abs().max().item()
    print(
        f"{mode} refine {refine} {H}x{W}->{height}x{width}: max |diff| {diff:.2e}, labels {agree}"
    )


def test_torchscript_matches_pytorch(model, tmp_path):
    set_inference(model, "online", 3)
    path = str(tmp_path / "model.ts")
    export_torchscript(ExportableViLSeg(model, VOCAB).eval(), path)
    traced = torch.jit.load(path)
    image = scene(96, 128, seed=1)
    with torch.no_grad():
        ref = model([{"image": image, "height": 80, "width": 100, "vocabulary": VOCAB}])[0]
        scores, clusters = traced(image[None], torch.tensor([80, 100]))
    torch.testing.assert_close(scores, ref["sem_seg"], rtol=1e-3, atol=1e-5)
    assert (clusters == ref["clusters"]).float().mean() >= 0.999


def test_kmeans_and_sliding_windows_are_refused(model):
    set_inference(model, "kmeans", 0)
    with pytest.raises(ValueError, match="'kmeans' cannot be exported.*INFERENCE_MODE online"):
        ExportableViLSeg(model, VOCAB)
    set_inference(model, "online", 0)
    model.sliding_window_size = 64
    try:
        with pytest.raises(ValueError, match="SLIDING_WINDOW_SIZE 0"):
            ExportableViLSeg(model, VOCAB)
    finally:
        model.sliding_window_size = 0
    with pytest.raises(ValueError, match="no 'background' class"):
        ExportableViLSeg(model, ["circle", "square"])  # the rules are on


# ------------------------------------------------------------------------------ the tools


@pytest.fixture(scope="module")
def export_tool():
    return load_script("tools/export_model.py", "vilseg_export_tool")


@pytest.fixture(scope="module")
def runtime():
    """tools/deploy/segment_onnx.py as a module (it imports no torch itself)."""
    return load_script("tools/deploy/segment_onnx.py", "vilseg_segment_onnx")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of the untrained tiny model (seed 0)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    ViLSegCheckpointer(build_model(tiny_cfg()), str(folder)).save("model_final")
    return str(folder / "model_final.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """PNGs: one at the tiny config's test size, one resized up (48 x 64), a grey and an RGBA."""
    folder = tmp_path_factory.mktemp("images")
    to_uint8 = lambda t: t.round().byte().permute(1, 2, 0).numpy()  # noqa: E731
    Image.fromarray(to_uint8(scene(128, 128, seed=2))).save(folder / "a_128.png")
    Image.fromarray(to_uint8(scene(48, 64, seed=3))).save(folder / "b_48x64.png")
    Image.fromarray(to_uint8(scene(96, 128, seed=4))[..., 1]).save(folder / "c_gray.png")
    alpha = np.broadcast_to(np.linspace(0, 255, 80).astype(np.uint8), (64, 80))
    Image.fromarray(np.dstack([to_uint8(scene(64, 80, seed=5)), alpha])).save(folder / "d_rgba.png")
    return folder


@pytest.fixture(scope="module")
def exported_folder(export_tool, weights, tmp_path_factory):
    """tools/export_model.py on the tiny config (its 10 PAMR steps), ONNX and TorchScript."""
    out = tmp_path_factory.mktemp("exported")
    vocabulary = ["--vocabulary", "circle; square; star"]
    formats = ["--format", "onnx", "torchscript"]
    opts = ["MODEL.WEIGHTS", weights, *RULE_OPTS]
    export_tool.main(
        ["--config-file", TINY_CONFIG, *vocabulary, "--output", str(out), *formats, *opts]
    )
    return out


def test_export_writes_the_model_its_classes_and_settings(exported_folder, weights):
    assert {"model.onnx", "model.ts", "classes.json", "export.json"} <= set(
        os.listdir(exported_folder)
    )
    classes = json.loads((exported_folder / "classes.json").read_text())
    # the rules are on: "background" added first, as tools/demo.py adds it
    assert classes["classes"] == ["background", "circle", "square", "star"]
    assert classes["background"] == 0 and len(classes["colors"]) == 4
    settings = classes["settings"]
    assert settings["inference_mode"] == "online" and settings["refine_iters"] == 10
    assert settings["bg_threshold"] == 0.4 and settings["bg_global_similarity"] == 0.97
    record = json.loads((exported_folder / "export.json").read_text())
    assert record["weights"] == os.path.abspath(weights) and len(record["weights_sha256"]) == 64
    assert record["opset"] == 17 and record["date"] and "REFINE_ITERS: 10" in record["config"]
    assert record["formats"]["onnx"]["bytes"] == os.path.getsize(exported_folder / "model.onnx")
    assert record["preprocessing"]["min_size_test"] == 128
    assert record["preprocessing"]["pillow"] == PIL.__version__
    check = record["verification"]  # the tool ran the graph in onnxruntime on its sample
    assert check["max_abs_diff"] < 1e-4 and check["label_agreement"] >= 0.999


def test_runtime_without_torch_writes_what_the_demo_writes(
    exported_folder, weights, images, runtime, tmp_path
):
    out = tmp_path / "onnx"
    cmd = [sys.executable, "-c", NO_TORCH, RUNTIME, "--model", str(exported_folder),
           "--input", str(images), "--output", str(out), "--threads", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout  # neither torch nor Detectron2 nor PIL was imported
    demo = load_script("tools/demo.py", "vilseg_demo_for_export")
    demo_out = tmp_path / "demo"
    demo_shares = demo.main(
        ["--config-file", TINY_CONFIG, "--input", str(images), "--output", str(demo_out),
         "--vocabulary", "circle; square; star",
         "--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, *RULE_OPTS]
    )  # fmt: skip
    shares = json.loads((out / "shares.json").read_text())
    assert sorted(shares) == sorted(demo_shares) and len(shares) == 4
    for path, expected in demo_shares.items():
        assert set(shares[path]) == set(expected), path
        for name, share in expected.items():
            assert shares[path][name] == pytest.approx(share, abs=1e-3), (path, name)
        stem = os.path.splitext(os.path.basename(path))[0]
        with Image.open(out / f"{stem}.png") as mine, Image.open(demo_out / f"{stem}.png") as ref:
            assert mine.size == ref.size  # input | classes | clusters, enlarged alike
    assert any(len(s) >= 2 for s in shares.values())  # several classes somewhere


def test_runtime_labels_equal_the_predictors(exported_folder, weights, images, runtime):
    """Pixel by pixel, through the resizing (48 x 64 up to 128 x 171) and the format conversions."""
    cfg = tiny_cfg(**RULES, MODEL__WEIGHTS=weights, MODEL__VILSEG__REFINE_ITERS=10)
    predictor = ViLSegPredictor(cfg, ["background", "circle", "square", "star"])
    exported = runtime.ExportedModel(str(exported_folder), threads=1)
    for path in sorted(images.iterdir()):
        rgb = runtime.read_image(str(path))
        np.testing.assert_array_equal(rgb, decode_image(str(path)))
        scores, clusters = exported(rgb)
        ref = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))
        agree = (scores.argmax(0) == ref["sem_seg"].argmax(0).numpy()).mean()
        assert agree >= 0.999, (path.name, agree)
        assert (clusters == ref["clusters"].numpy()).mean() >= 0.999, path.name


@pytest.mark.parametrize(
    "size, new_size",
    [((48, 64), (128, 171)), ((300, 200), (192, 128)), ((1000, 37), (512, 19)),
     ((100, 100), (58, 80)), ((97, 131), (448, 605)), ((64, 64), (64, 64))],
)  # fmt: skip
def test_runtime_resizes_as_detectron2(runtime, size, new_size):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = T.ResizeTransform(*size, *new_size).apply_image(image)
    pillow = int(PIL.__version__.split(".")[0])  # the order of the Pillow installed
    np.testing.assert_array_equal(
        runtime.resize_bilinear(image, *new_size, pillow=pillow), expected
    )
    short, longest = min(new_size), 512
    assert runtime.shortest_edge_size(*size, short, longest) == (
        T.ResizeShortestEdge.get_output_shape(*size, short, longest)
    )


def test_runtime_reads_images_as_the_demo(runtime, tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    files = {
        "gray.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., 1]]), mode="RGBA"),
        "gray16.png": Image.fromarray((np.arange(40 * 56).reshape(40, 56) * 29).astype(np.uint16)),
        "palette.png": Image.fromarray(rgb).convert("P"),
    }
    for name, img in files.items():
        img.save(tmp_path / name)
        np.testing.assert_array_equal(
            runtime.read_image(str(tmp_path / name)), decode_image(str(tmp_path / name)), name
        )
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the file's 40 x 56 pixels are shown 56 x 40
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    mine, ref = runtime.read_image(str(tmp_path / "rotated.jpg")), decode_image(
        str(tmp_path / "rotated.jpg")
    )
    assert mine.shape == ref.shape == (56, 40, 3)
    assert np.abs(mine.astype(int) - ref).max() <= 2  # two JPEG decoders
    (tmp_path / "broken.png").write_bytes(b"<html>404</html>")
    with pytest.raises(runtime.UnreadableImage, match="not an image"):
        runtime.read_image(str(tmp_path / "broken.png"))


def test_export_errors_say_what_to_fix(export_tool, weights, tmp_path):
    def run(*argv):
        return export_tool.main(["--output", str(tmp_path / "out"), *argv])

    with pytest.raises(SystemExit, match="no_such.yaml: no such file"):
        run("--config-file", "no_such.yaml", "--vocabulary", "a; b")
    with pytest.raises(UserError, match="The vocabulary is empty"):
        run("--config-file", TINY_CONFIG, "--vocabulary", " ; ", "MODEL.WEIGHTS", weights)
    with pytest.raises(SystemExit, match="Unknown config key MODEL.VILSEG.REFINE_ITER"):
        run("--config-file", TINY_CONFIG, "--vocabulary", "a", "MODEL.VILSEG.REFINE_ITER", "1")
    with pytest.raises(SystemExit, match="'kmeans' cannot be exported"):
        run("--config-file", TINY_CONFIG, "--vocabulary", "a", "MODEL.WEIGHTS", weights,
            "MODEL.VILSEG.INFERENCE_MODE", "kmeans")  # fmt: skip
    with pytest.raises(SystemExit, match="No trained weights"):
        run("--config-file", TINY_CONFIG, "--vocabulary", "a")
    assert not (tmp_path / "out").exists()  # nothing written


def test_export_with_missing_weights_exits_with_one_message(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "export_model.py"), "--config-file",
           TINY_CONFIG, "--vocabulary", "a; b", "--output", str(tmp_path / "out"),
           "MODEL.WEIGHTS", str(tmp_path / "missing.pth")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"MODEL.WEIGHTS {tmp_path / 'missing.pth'}: no such file."
    assert "Traceback" not in proc.stderr
