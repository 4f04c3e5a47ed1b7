"""The ``export`` section: the config's ``online`` inference exported to ONNX
(:mod:`vilseg_d2.export`) and run in onnxruntime fp32, against PyTorch eager fp32 and bf16 at the
base size; and the demo model's mIoU on the synthetic validation set through onnxruntime (the
torch-free runtime, ``tools/deploy/segment_onnx.py``) and through PyTorch.

onnxruntime is timed in a fresh Python process that cannot import torch (what a server running
the runtime holds), from the same input tensor; its peak RSS is that whole process'. PyTorch's
times are taken in this process, as the ``inference`` section takes them, and its peak RSS in the
worker subprocess (``inference_fp32`` / ``inference_bf16`` jobs: the whole process, model built).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np
import torch

from ..export import ExportableViLSeg, export_onnx
from .harness import log, model_settings, run_subprocess, time_call, with_rate
from .inference import inference_call, noise_image
from .plan import DTYPES, Profile

__all__ = ["export_miou_section", "export_section", "load_runtime", "mean_iou", "run_onnxruntime"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNTIME = os.path.join(REPO, "tools", "deploy", "segment_onnx.py")
DEMO_DIR = os.path.join(REPO, "output", "demo", "train")

# Run in a fresh process: onnxruntime on the saved input, torch made unimportable.
_ORT_PROBE = r"""
import json, statistics, sys, time
sys.modules["torch"] = None
import numpy as np
import onnxruntime

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out

spec = json.load(open(sys.argv[1]))
after_import = status()
options = onnxruntime.SessionOptions()
if spec["threads"]:
    options.intra_op_num_threads = spec["threads"]
start = time.perf_counter()
session = onnxruntime.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
session_s = time.perf_counter() - start
inputs = {"image": np.load(spec["image"]), "output_size": np.array(spec["output_size"])}
for _ in range(spec["warmup"]):
    session.run(None, inputs)
times = []
for _ in range(spec["reps"]):
    start = time.perf_counter()
    session.run(None, inputs)
    times.append(time.perf_counter() - start)
end = status()
# Where the time goes: one more run, profiled by onnxruntime, its node times summed per operator.
options.enable_profiling = True
options.profile_file_prefix = spec["profile_prefix"]
profiled = onnxruntime.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
profiled.run(None, inputs)
per_op = {}
for event in json.load(open(profiled.end_profiling())):
    if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
        op = event.get("args", {}).get("op_name", "?")
        per_op[op] = per_op.get(op, 0) + event["dur"] / 1e3
total = sum(per_op.values()) or 1.0
top = sorted(per_op.items(), key=lambda kv: -kv[1])[:10]
json.dump({"median_s": statistics.median(times), "times_s": times, "warmup": spec["warmup"],
           "reps": spec["reps"], "session_s": session_s, "threads": spec["threads"],
           "torch_imported": "torch" in sys.modules and sys.modules["torch"] is not None,
           "memory": {"peak_rss_bytes": end.get("VmHWM", 0),
                      "rss_after_import_bytes": after_import.get("VmRSS", 0)},
           "top_operators": [{"op": op, "ms": ms, "share": ms / total} for op, ms in top]},
          open(spec["output"], "w"))
"""


def run_onnxruntime(
    model_path: str, image: np.ndarray, output_size: Sequence[int], warmup: int, reps: int,
    threads: int,
) -> Dict:  # fmt: skip
    """Time ``model_path`` in onnxruntime in a fresh, torch-free process.

    Args:
        model_path: an exported ``model.onnx``.
        image: its 1 x 3 x H x W float32 input.
        output_size: (height, width).
        warmup, reps: untimed and timed runs.
        threads: onnxruntime's intra-op threads (0: its default).

    Returns:
        a :func:`~.harness.time_call`-like dict with ``session_s``, the process' ``memory`` and
        ``top_operators`` (onnxruntime's profile of one more run: milliseconds per operator type).
    """
    with tempfile.TemporaryDirectory(prefix="vilseg_bench_ort_") as tmp:
        spec = {
            "model": model_path,
            "image": os.path.join(tmp, "image.npy"),
            "output_size": [int(s) for s in output_size],
            "warmup": warmup,
            "reps": reps,
            "threads": threads,
            "output": os.path.join(tmp, "out.json"),
            "profile_prefix": os.path.join(tmp, "ort_profile"),
        }
        np.save(spec["image"], image)
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        subprocess.run([sys.executable, "-c", _ORT_PROBE, spec_path], check=True)
        with open(spec["output"], encoding="utf-8") as f:
            return json.load(f)


def _pytorch_memory(profile: Profile, opts: Sequence[str], threads: int) -> Dict:
    """Peak RSS of PyTorch's online inference at the base size, fp32 and bf16, in the worker."""
    jobs = [
        {"name": f"inference_{dtype}", "kind": "inference", "dtype": dtype,
         "size": profile.base_size, "vocabulary_size": profile.vocab_sizes[0],
         "warmup": profile.warmup, "reps": 1}
        for dtype in DTYPES
    ]  # fmt: skip
    spec = {"config_file": profile.config_file, "opts": list(opts), "threads": threads}
    return run_subprocess("vilseg_d2.benchmark.worker", dict(spec, jobs=jobs))["jobs"]


def export_section(
    model, profile: Profile, vocabulary: List[str], opts: Sequence[str], threads: int = 0
) -> Dict:
    """ONNX export of ``online`` inference with ``vocabulary``; onnxruntime fp32 against PyTorch
    eager fp32 and bf16 on the base-size noise image (see the module docstring). onnxruntime runs
    on as many threads as torch.

    Args:
        model: the built model (eval mode) of ``profile``'s config.
        profile: what to measure.
        vocabulary: the classes baked in (the ``inference`` section's).
        opts: the command line's config overrides (for the memory subprocess).
        threads: the command line's ``--threads`` (for the memory subprocess; 0: torch's choice).
    """
    warmup, reps = profile.schedule()
    ort_threads = torch.get_num_threads()
    size = profile.base_size
    image = noise_image(size, size)
    out: Dict = {"image_size": [size, size], "vocabulary_size": len(vocabulary), "mode": "online"}
    with tempfile.TemporaryDirectory(prefix="vilseg_bench_export_") as tmp:
        path = os.path.join(tmp, "model.onnx")
        with model_settings(model, inference_mode="online"):
            start = time.perf_counter()
            module = ExportableViLSeg(model, vocabulary).eval()
            export_onnx(module, path)
            out["export_s"] = time.perf_counter() - start
            out["model_bytes"] = os.path.getsize(path)
            mib, seconds = out["model_bytes"] / 2**20, out["export_s"]
            log(f"{profile.name} export: {mib:.1f} MiB in {seconds:.1f} s")
            x = image[None].float().numpy()
            ort = run_onnxruntime(path, x, (size, size), warmup, reps, ort_threads)
            out["onnxruntime_fp32"] = with_rate(ort, 1)
            log(f"{profile.name} onnxruntime fp32: {ort['median_s']:.3f} s")
            for dtype in DTYPES:
                m = time_call(inference_call(model, image, vocabulary, dtype), warmup, reps)
                out[f"pytorch_{dtype}"] = with_rate(m, 1)
                log(f"{profile.name} pytorch {dtype}: {m['median_s']:.3f} s")
            out["parity"] = _parity(path, model, image, vocabulary, ort_threads)
    memory = _pytorch_memory(profile, opts, threads)
    for dtype in DTYPES:
        out[f"pytorch_{dtype}"]["memory"] = memory[f"inference_{dtype}"]["memory"]
    fp32 = out["pytorch_fp32"]["median_s"]
    out["speedup_over_pytorch"] = {
        dtype: out[f"pytorch_{dtype}"]["median_s"] / ort["median_s"] for dtype in DTYPES
    }
    log(f"{profile.name} onnxruntime fp32 over PyTorch fp32: {fp32 / ort['median_s']:.2f}x")
    return out


def _parity(path: str, model, image: torch.Tensor, vocabulary: List[str], threads: int) -> Dict:
    """onnxruntime against PyTorch fp32 on the timed image: the largest score difference and the
    share of pixels with the same label."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    h, w = image.shape[-2:]
    scores, _ = session.run(None, {"image": image[None].float().numpy(), "output_size": [h, w]})
    expected = inference_call(model, image, vocabulary, "fp32")()[0]["sem_seg"].numpy()
    return {
        "max_abs_diff": float(np.abs(scores - expected).max()),
        "label_agreement": float((scores.argmax(0) == expected.argmax(0)).mean()),
    }


# --------------------------------------------------------------------------- mIoU


def load_runtime():
    """``tools/deploy/segment_onnx.py`` as a module."""
    spec = importlib.util.spec_from_file_location("vilseg_segment_onnx", RUNTIME)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mean_iou(confusion: np.ndarray) -> float:
    """mIoU (%) from a K x K confusion matrix (rows: truth, columns: prediction), as Detectron2's
    ``SemSegEvaluator`` counts it: the IoU of each class present in the truth, averaged over the
    classes present in the truth or the prediction."""
    tp = np.diag(confusion).astype(np.float64)
    truth, predicted = confusion.sum(1), confusion.sum(0)
    present = truth > 0
    iou = np.zeros_like(tp)
    iou[present] = tp[present] / (truth + predicted - tp)[present]
    return 100.0 * float(iou[present].sum() / max(((truth + predicted) > 0).sum(), 1))


def _confusion(truth: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    valid = truth < k  # 255: unlabelled
    index = k * truth[valid].astype(np.int64) + labels[valid]
    return np.bincount(index, minlength=k * k).reshape(k, k)


def export_miou_section(tiny: bool, threads: int) -> Dict:
    """The demo model's mIoU on the synthetic validation set through onnxruntime and PyTorch,
    with the demo config's inference (online, its mask refinement and background rules).

    ``tiny``: an untrained tiny model on 6 freshly generated validation images (the plumbing,
    not the numbers). Otherwise the model ``make demo`` wrote (``output/demo/train``) on the
    registered ``synthetic_sem_seg_val``; without it, the section says so and measures nothing.
    """
    from PIL import Image

    from ..config import get_vilseg_cfg
    from ..data import generate_synthetic_world
    from ..data.datasets.register_synthetic import default_synthetic_root
    from ..data.synthetic import STUFF_CLASSES

    config_file = os.path.join(DEMO_DIR, "config.yaml")
    weights = os.path.join(DEMO_DIR, "model_final.pth")
    if not tiny and not (os.path.isfile(config_file) and os.path.isfile(weights)):
        return {"skipped": f"no demo model in {DEMO_DIR}: run `make demo` first"}
    with tempfile.TemporaryDirectory(prefix="vilseg_bench_miou_") as tmp:
        if tiny:
            root = os.path.join(tmp, "world")
            generate_synthetic_world(root, num_train=0, num_val=6, num_workers=0)
            config_file = os.path.join(REPO, "configs", "vilseg_tiny.yaml")
            cfg = get_vilseg_cfg(config_file, ["MODEL.DEVICE", "cpu"])
        else:
            root = default_synthetic_root()
            if not os.path.isdir(root):  # a relative $DETECTRON2_DATASETS, from the repository
                root = os.path.join(REPO, root)
            cfg = get_vilseg_cfg(config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights])
        cfg.DATASETS.TEST = ()
        image_dir, mask_dir = os.path.join(root, "val", "images"), os.path.join(
            root, "val", "masks"
        )
        if not os.path.isdir(image_dir):
            return {"skipped": f"no synthetic validation images in {image_dir}"}
        names = sorted(os.listdir(image_dir))
        classes = list(STUFF_CLASSES)
        torch_labels, ort_labels = _segment_both(cfg, classes, image_dir, names, tmp, threads)
        k = len(classes)
        conf_torch, conf_ort = np.zeros((k, k), np.int64), np.zeros((k, k), np.int64)
        agree = 0.0
        for name, a, b in zip(names, torch_labels, ort_labels):
            truth = np.asarray(Image.open(os.path.join(mask_dir, name)))
            conf_torch += _confusion(truth, a, k)
            conf_ort += _confusion(truth, b, k)
            agree += float((a == b).mean())
    out = {
        "model": "untrained tiny (smoke test)" if tiny else os.path.relpath(weights, REPO),
        "config_file": os.path.relpath(config_file, REPO),
        "images": len(names),
        "inference": {
            "mode": cfg.MODEL.VILSEG.INFERENCE_MODE,
            "refine_iters": int(cfg.MODEL.VILSEG.REFINE_ITERS),
            "bg_threshold": float(cfg.MODEL.VILSEG.BG_THRESHOLD),
            "bg_global_similarity": float(cfg.MODEL.VILSEG.BG_GLOBAL_SIMILARITY),
        },
        "mIoU_pytorch": mean_iou(conf_torch),
        "mIoU_onnxruntime": mean_iou(conf_ort),
        "label_agreement": agree / max(len(names), 1),
    }
    out["mIoU_abs_diff"] = abs(out["mIoU_pytorch"] - out["mIoU_onnxruntime"])
    log(
        f"synthetic val mIoU: PyTorch {out['mIoU_pytorch']:.2f}, onnxruntime "
        f"{out['mIoU_onnxruntime']:.2f} ({len(names)} images)"
    )
    return out


def _segment_both(cfg, classes, image_dir, names, tmp, threads):
    """Each image's labels through PyTorch (the predictor ``tools/demo.py`` uses) and through the
    exported graph in the runtime (images read by each side's own reader)."""
    from detectron2.modeling import build_model

    from ..data.image_io import decode_image
    from ..engine import ViLSegCheckpointer, ViLSegPredictor
    from ..export import export_model

    cfg.freeze()
    predictor = ViLSegPredictor(cfg, classes)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        ViLSegCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    folder = os.path.join(tmp, "exported")
    export_model(model, cfg, classes, folder, verify=False)
    runtime = load_runtime()
    exported = runtime.ExportedModel(folder, threads)
    torch_labels, ort_labels = [], []
    for name in names:
        path = os.path.join(image_dir, name)
        rgb = decode_image(path)
        out = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))
        torch_labels.append(out["sem_seg"].argmax(0).numpy())
        scores, _ = exported(runtime.read_image(path))
        ort_labels.append(scores.argmax(0))
    return torch_labels, ort_labels
