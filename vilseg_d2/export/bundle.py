"""Writing an exported model's folder: the graph (``model.onnx``, ``model.ts``), ``classes.json``
and ``export.json``, which is all ``tools/deploy/segment_onnx.py`` needs.

Who does what, recorded in ``export.json`` (``"preprocessing"``) for the runtime:

* the runtime reads the image as RGB (as ``tools/demo.py``), resizes it as Detectron2's
  ``ResizeShortestEdge`` (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, PIL's bilinear filter),
  puts its channels in ``INPUT.FORMAT`` order and passes 1 x 3 x H x W float32 0-255 values and
  the original (height, width);
* the graph normalises (``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``), pads to the patch, runs the
  backbone, the clustering head or dense matching, the text similarity with the vocabulary's
  class embeddings, the background rules and the mask refinement, and resizes the result to the
  original size: ``sem_seg`` (K x height x width) and ``clusters`` (height x width), as
  ``ViLSeg.inference`` returns them;
* the runtime takes the argmax over the classes, draws the pictures and counts the shares.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import warnings
from typing import Dict, Iterator, Optional, Sequence, Tuple

import PIL
import torch
from torch import nn

from ..visualization import class_colors, palette
from .exportable import ExportableViLSeg, math_attention

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "sample_inputs",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "torchscript")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.ts"}
# 17: LayerNormalization is one ONNX operator (onnxruntime runs it fused); onnxruntime has run
# opset 17 since 1.14.
DEFAULT_OPSET = 17
INPUT_NAMES = ("image", "output_size")
OUTPUT_NAMES = ("sem_seg", "clusters")
DYNAMIC_AXES = {
    "image": {2: "height", 3: "width"},
    "sem_seg": {1: "output_height", 2: "output_width"},
    "clusters": {0: "output_height", 1: "output_width"},
}


def sample_inputs(patch: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The inputs the graph is traced with: a 1 x 3 x H x W 0-255 image whose sides are no
    multiple of the patch (so that the padding is traced) and an output size other than its own
    (so that the resizing is); the graph takes any sizes."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 3 * patch + 5, 4 * patch + 3, generator=generator) * 255
    return image, torch.tensor([3 * patch + 11, 4 * patch + 9])


@contextlib.contextmanager
def _tracing(module: ExportableViLSeg) -> Iterator[None]:
    """No autograd, the batched-matmul attention, and quiet: the tracer warns where a Python
    value is read from a tensor, here only checks of fixed shapes (3 channels, K classes), and
    the exporter about slices it leaves unfolded; the parity tests run the graph at sizes other
    than the traced one. This project traces on purpose (``torch.jit.trace`` is deprecated in
    favour of ``torch.export``, which needs the data-dependent steps rewritten)."""
    with torch.no_grad(), math_attention(module), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
        yield


def export_onnx(module: ExportableViLSeg, path: str, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``module`` into an ONNX graph at ``path`` (TorchScript-based exporter; image height
    and width and the output size dynamic)."""
    with _tracing(module):
        torch.onnx.export(
            module,
            sample_inputs(module.backbone.size_divisibility),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=DYNAMIC_AXES,
        )


def export_torchscript(module: ExportableViLSeg, path: str) -> None:
    """Trace ``module`` into a TorchScript file at ``path`` (``torch.jit.load`` it; same inputs
    and outputs as the ONNX graph)."""
    with _tracing(module):
        traced = torch.jit.trace(
            module, sample_inputs(module.backbone.size_divisibility), check_trace=False
        )
    traced.save(path)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> Dict[str, str]:
    import detectron2

    versions = {"torch": torch.__version__, "detectron2": detectron2.__version__}
    try:
        import onnx

        versions["onnx"] = onnx.__version__
    except ImportError:
        pass
    return versions


def classes_record(module: ExportableViLSeg, model: nn.Module) -> Dict:
    """``classes.json``: the output's classes (in channel order), their colours, and the inference
    settings baked into the graph."""
    seg = module.segmenter
    return {
        "classes": list(module.vocabulary),
        "colors": class_colors(module.num_classes),
        "palette": palette(),
        "background": module.background,
        "settings": {
            "inference_mode": seg.mode,
            "num_clusters": int(model.num_clusters),
            "bg_threshold": float(seg.bg_threshold),
            "bg_global_similarity": float(seg.bg_global_similarity),
            "refine_iters": int(seg.refine_iters),
            "refine_dilations": list(seg.refine_dilations),
            "prompt_templates": model.text_encoder.templates,
            "logit_scale": float(module.logit_scale),
        },
    }


def preprocessing_record(cfg) -> Dict:
    """``export.json``'s ``"preprocessing"``: what the runtime does before the graph."""
    return {
        "read": "RGB uint8 (EXIF rotation applied, alpha over white, 16-bit scaled to 8 bits)",
        "resize": "shortest edge to min_size_test, longer edge at most max_size_test "
        "(Detectron2's ResizeShortestEdge, PIL's bilinear filter)",
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        # Pillow 13 resizes the heights first where they shrink most; earlier ones the widths
        # first (a few values differ by 1): the runtime follows the Pillow the model ran with.
        "pillow": PIL.__version__,
        "format": cfg.INPUT.FORMAT,
        "input": "image: 1 x 3 x H x W float32, 0-255, channels in 'format' order; "
        "output_size: int64 (height, width) of the original image",
        "in_graph": [
            "normalisation (MODEL.PIXEL_MEAN / PIXEL_STD)",
            "padding to the patch",
            "backbone, clustering head or dense matching, text similarity",
            "background rules",
            "mask refinement (refine_iters > 0)",
            "resizing to output_size",
        ],
        "outputs": "sem_seg: K x height x width float32 class scores (classes.json order); "
        "clusters: height x width int64 cluster ids (dense: class ids, background first)",
    }


def export_model(
    model: nn.Module,
    cfg,
    vocabulary: Sequence[str],
    output_dir: str,
    *,
    formats: Sequence[str] = ("onnx",),
    opset: int = DEFAULT_OPSET,
    config_file: str = "",
    verify: bool = True,
) -> Dict:
    """Export ``model`` with ``vocabulary`` baked in to ``output_dir``.

    Args:
        model: a built ViL-Seg model with its weights, in eval mode.
        cfg: its config.
        vocabulary: K class names (synonyms separated by commas; "background" for the rules).
        output_dir: written with ``model.onnx`` / ``model.ts``, ``classes.json``, ``export.json``.
        formats: a subset of :data:`EXPORT_FORMATS`.
        opset: the ONNX opset.
        config_file: the config's file, recorded.
        verify: run the ONNX graph in onnxruntime (if installed) on the traced sample and record
            its largest difference from the PyTorch model.

    Returns:
        ``export.json``'s content.

    Raises:
        ValueError: an unknown format, or a config whose inference cannot be exported
            (:func:`~vilseg_d2.export.exportable.check_exportable`).
    """
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown or not formats:
        raise ValueError(f"Export formats must be among {list(EXPORT_FORMATS)}, got {formats}.")
    module = ExportableViLSeg(model, vocabulary).eval()
    os.makedirs(output_dir, exist_ok=True)
    files: Dict[str, Dict] = {}
    for fmt in dict.fromkeys(formats):
        path = os.path.join(output_dir, FILE_NAMES[fmt])
        if fmt == "onnx":
            export_onnx(module, path, opset)
        else:
            export_torchscript(module, path)
        files[fmt] = {"file": FILE_NAMES[fmt], "bytes": os.path.getsize(path)}
        logger.info(f"Wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    weights = cfg.MODEL.WEIGHTS
    record = {
        "config_file": config_file,
        "config": cfg.dump(),
        "weights": os.path.abspath(weights) if weights else "",
        "weights_sha256": _sha256(weights) if weights and os.path.isfile(weights) else "",
        "opset": opset if "onnx" in files else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "formats": files,
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "preprocessing": preprocessing_record(cfg),
    }
    if verify and "onnx" in files:
        record["verification"] = verify_onnx(os.path.join(output_dir, FILE_NAMES["onnx"]), module)
    _write_json(os.path.join(output_dir, "classes.json"), classes_record(module, model))
    _write_json(os.path.join(output_dir, "export.json"), record)
    return record


def verify_onnx(path: str, module: ExportableViLSeg) -> Optional[Dict]:
    """onnxruntime against the PyTorch module on the traced sample: the largest absolute
    difference of the class scores and the share of pixels whose label agrees (None without
    onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        logger.info("onnxruntime is not installed: the exported graph was not run.")
        return None
    image, size = sample_inputs(module.backbone.size_divisibility)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    scores, _ = session.run(None, {"image": image.numpy(), "output_size": size.numpy()})
    with torch.no_grad():
        expected, _ = module(image, size)
    scores = torch.from_numpy(scores)
    check = {
        "image_size": list(image.shape[-2:]),
        "output_size": size.tolist(),
        "max_abs_diff": float((scores - expected).abs().max()),
        "label_agreement": float((scores.argmax(0) == expected.argmax(0)).float().mean()),
    }
    logger.info(
        f"onnxruntime vs PyTorch on a {image.shape[-2]} x {image.shape[-1]} sample: largest "
        f"score difference {check['max_abs_diff']:.2e}, labels equal on "
        f"{100 * check['label_agreement']:.2f}% of the pixels."
    )
    return check


def _write_json(path: str, content: Dict) -> None:
    """Indented JSON, with lists of numbers (colours) on one line."""
    text = json.dumps(content, indent=1)
    text = re.sub(r"\[[-+.\de\s,]+\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
