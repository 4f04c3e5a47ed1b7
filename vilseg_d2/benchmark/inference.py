"""The in-process inference sections: ``inference`` (bare backbone and the three modes),
``vocabulary`` (small and large vocabularies) and ``sizes`` (whole images of several sizes, and a
large image by sliding window)."""

from __future__ import annotations

import time
from typing import Callable, Dict, List

import torch
from detectron2.structures import ImageList

from ..analysis.samples import random_image
from .harness import log, model_settings, precision, time_call, with_rate
from .plan import DTYPES, MODES, Profile

__all__ = [
    "backbone_call",
    "cache_vocabulary",
    "inference_call",
    "inference_section",
    "noise_image",
    "sizes_section",
    "vocabulary_section",
]


def noise_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A 3 x H x W uint8 image of uniform noise, the same for the same seed."""
    return random_image(height, width, torch.Generator().manual_seed(seed))


def backbone_input(model, image: torch.Tensor) -> torch.Tensor:
    """The normalised, patch-padded 1 x 3 x Hp x Wp tensor the full inference path feeds the
    backbone."""
    x = (image.to(model.device).float() - model.pixel_mean) / model.pixel_std
    return ImageList.from_tensors([x], size_divisibility=model.backbone.size_divisibility).tensor


def inference_call(
    model, image: torch.Tensor, vocabulary: List[str], dtype: str
) -> Callable[[], object]:
    """One full inference of ``image`` (eval mode, no autograd) at ``dtype``."""
    inputs = [{"image": image, "vocabulary": vocabulary}]

    def run():
        with torch.inference_mode(), precision(dtype):
            return model(inputs)

    return run


def backbone_call(model, image: torch.Tensor, dtype: str) -> Callable[[], object]:
    """One bare backbone forward on the tensor the full path would use."""
    x = backbone_input(model, image)

    def run():
        with torch.inference_mode(), precision(dtype):
            return model.backbone(x)

    return run


def cache_vocabulary(model, vocabulary: List[str], dtype: str) -> float:
    """Compute (and let the model cache) the vocabulary's text features; returns the seconds."""
    start = time.perf_counter()
    with torch.inference_mode(), precision(dtype):
        model.text_encoder.class_embeddings(vocabulary)
    return time.perf_counter() - start


def inference_section(model, profile: Profile, vocabulary: List[str]) -> Dict:
    """Backbone and the three modes at the base size, fp32 and bf16."""
    image = noise_image(profile.base_size, profile.base_size)
    warmup, reps = profile.schedule()
    out: Dict[str, Dict] = {}
    for dtype in DTYPES:
        backbone = time_call(backbone_call(model, image, dtype), warmup, reps)
        out[dtype] = {"backbone": with_rate(backbone, 1)}
        for mode in MODES:
            with model_settings(model, inference_mode=mode):
                m = time_call(inference_call(model, image, vocabulary, dtype), warmup, reps)
            out[dtype][mode] = with_rate(m, 1)
            log(f"{profile.name} {dtype} {mode}: {m['median_s']:.3f} s")
    out["image_size"] = [profile.base_size, profile.base_size]
    out["vocabulary_size"] = len(vocabulary)
    # each mode's own work (head or K-means, region pooling, text matching, upsampling,
    # postprocess)
    out["beyond_backbone_s"] = {
        dtype: {
            mode: out[dtype][mode]["median_s"] - out[dtype]["backbone"]["median_s"]
            for mode in MODES
        }
        for dtype in DTYPES
    }
    return out


def vocabulary_section(
    model, profile: Profile, vocabularies: Dict[int, List[str]], text_seconds: Dict
) -> Dict:
    """``online`` inference per vocabulary size, fp32 and bf16 (text features already cached)."""
    image = noise_image(profile.base_size, profile.base_size)
    warmup, reps = profile.schedule()
    out: Dict[str, Dict] = {"text_encoding_s": text_seconds}
    for dtype in DTYPES:
        out[dtype] = {}
        for size, vocab in vocabularies.items():
            with model_settings(model, inference_mode="online"):
                m = time_call(inference_call(model, image, vocab, dtype), warmup, reps)
            out[dtype][str(size)] = with_rate(m, 1)
            log(f"{profile.name} {dtype} vocabulary {size}: {m['median_s']:.3f} s")
    out["image_size"] = [profile.base_size, profile.base_size]
    return out


def _size_key(h: int, w: int, window: int = 0, stride: int = 0) -> str:
    return f"{w}x{h}" + (f"_window{window}_stride{stride}" if window else "")


def sizes_section(model, profile: Profile, vocabulary: List[str], dtype: str = "fp32") -> Dict:
    """``online`` at several whole-image sizes, then the large image by sliding window."""
    out: Dict[str, Dict] = {}
    for h, w in profile.sizes:
        kind = "size_large" if h > profile.base_size else ""
        run = inference_call(model, noise_image(h, w), vocabulary, dtype)
        m = time_call(run, *profile.schedule(kind))
        out[_size_key(h, w)] = dict(with_rate(m, 1), height=h, width=w, pixels=h * w, windows=1)
        log(f"{profile.name} {dtype} size {w}x{h}: {m['median_s']:.3f} s")
    h, w = profile.large_size
    image = noise_image(h, w)
    for stride in profile.strides:
        window = {"sliding_window_size": profile.window, "sliding_window_stride": stride}
        with model_settings(model, inference_mode="online", **window):
            run = inference_call(model, image, vocabulary, dtype)
            m = time_call(run, *profile.schedule("sliding"))
        windows = _num_windows(h, profile.window, stride) * _num_windows(w, profile.window, stride)
        key = _size_key(h, w, profile.window, stride)
        out[key] = dict(
            with_rate(m, 1),
            height=h,
            width=w,
            pixels=h * w,
            windows=windows,
            window=profile.window,
            stride=stride,
        )
        log(f"{profile.name} {dtype} {key} ({windows} windows): {m['median_s']:.3f} s")
    base_key = _size_key(profile.base_size, profile.base_size)
    for m in out.values():
        m["seconds_per_megapixel"] = m["median_s"] / (m["pixels"] / 1e6)
        m["time_over_area_proportional"] = (m["median_s"] / out[base_key]["median_s"]) / (
            m["pixels"] / out[base_key]["pixels"]
        )
    return {
        "dtype": dtype,
        "mode": "online",
        "vocabulary_size": len(vocabulary),
        "reference": base_key,
        "results": out,
    }


def _num_windows(length: int, size: int, stride: int) -> int:
    """Windows along one side, as the model places them (the last one flush with the border)."""
    if length <= size:
        return 1
    starts = list(range(0, length - size + 1, stride))
    return len(starts) + (starts[-1] + size < length)
