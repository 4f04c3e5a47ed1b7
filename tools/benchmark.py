#!/usr/bin/env python
"""Inference and training throughput of ViL-Seg on CPU, as JSON and a readable table.

    tools/benchmark.py --output bench.json                 # ViT-B/16 (random init) + tiny, all sections
    tools/benchmark.py --tiny --output tiny.json           # seconds: tiny config, small sizes, 1 rep
    tools/benchmark.py --config-file configs/vilseg_tiny.yaml --reps 5 --threads 1 \\
        --opts MODEL.VILSEG.NUM_CLUSTERS 20

Sections (``--sections``, default all):

* ``inference``: at the config's test size, the bare backbone (``model.backbone`` on the same
  normalised padded tensor the full path uses) and the full ``online`` / ``kmeans`` / ``dense``
  inference (``model([{"image", "vocabulary"}])`` in eval mode), fp32 and bf16 autocast.
* ``vocabulary``: ``online`` with the 21 PASCAL VOC classes and with 1,000 synthetic class names
  (text features cached before timing; the one-time encoding is reported separately).
* ``sizes``: ``online`` (fp32) at half, one and two times the test size, and a large image
  (2048x1024 for ViT-B/16) by sliding window, non-overlapping and with the eval configs' overlap.
* ``training``: one iteration (forward + backward + AdamW step through the project's
  ``AutocastTrainer``) on batch 8 of fake training dicts, fp32 and bf16, timed in a fresh
  subprocess per config, which also gives the peak memory of training and of inference. The
  same subprocess times open_clip's own CLIP step (``open_clip.create_model`` of the config's
  model name with ``ClipLoss``: the same towers, batch, dtype, trainer and AdamW) and
  ``clip_comparison`` puts ViL-Seg's step time over CLIP's next to their training FLOPs per
  sample (``vilseg_d2.analysis``, as ``tools/analyze_model.py`` counts them).
* ``loader``: the caption mapper's samples/s on one thread and the training loader's samples/s
  with 2 workers, on a small synthetic world written to a temporary folder (tiny config).

Every figure is the median of several repetitions after warm-up; slow items use fewer
repetitions (each figure records its own ``warmup`` and ``reps``). The JSON also holds the
machine (CPU model, torch threads), the settings and the issue's targets with ``met`` flags.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402
from detectron2.utils.events import EventStorage, get_event_storage  # noqa: E402

import vilseg_d2  # noqa: E402,F401  (fills the registries)
from vilseg_d2 import add_vilseg_config  # noqa: E402
from vilseg_d2.analysis import (  # noqa: E402
    ClipTrainingModel,
    clip_samples,
    training_flop_ratio,
    training_samples,
)
from vilseg_d2.engine import AutocastTrainer, build_vilseg_optimizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VITB16_CONFIG = os.path.join(REPO, "configs", "vilseg_vitb16.yaml")
TINY_CONFIG = os.path.join(REPO, "configs", "vilseg_tiny.yaml")
GIB = 1024**3

PASCAL_VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
)  # fmt: skip

SECTIONS = ("inference", "vocabulary", "sizes", "training", "loader")
DTYPES = ("fp32", "bf16")
MODES = ("online", "kmeans", "dense")
MEMORY_METHOD = (
    "Peak resident set size (Linux VmHWM) of a fresh subprocess per config, which builds the model, "
    "caches the vocabulary, then for each job calls malloc_trim(0), resets the high-water mark "
    "(echo 5 > /proc/self/clear_refs) and runs the job's warm-up and repetitions. peak_rss_bytes is "
    "the whole process (interpreter, torch and other libraries, model weights, activations, "
    "optimizer state); peak_over_import_bytes subtracts the RSS after the imports; "
    "peak_over_build_bytes subtracts the RSS with the model built (what the job itself needs)."
)


# --------------------------------------------------------------------------- settings


@dataclass
class Profile:
    """What is measured for one config, and how often.

    Attributes:
        name: short key of the config in the results ("vitb16", "tiny").
        config_file: the YAML config.
        base_size: side of the square image of the inference and vocabulary sections.
        sizes: (H, W) of the whole-image size sweep.
        large_size: (H, W) of the image segmented by sliding window.
        window: sliding window side.
        strides: sliding window strides (``window`` = no overlap; smaller = overlap).
        vocab_sizes: (small, large) vocabulary sizes.
        train_batch: training batch of the training section.
        text_dtype: precision of the one-time vocabulary encoding ("bf16" for the big model,
            whose 1,000-class encoding takes tens of seconds in fp32).
        consumption_batch: if set, one more bf16 training job at this batch: the step whose
            sample consumption the loader is compared with.
        caps: per slow item kind ("size_large", "sliding", "train_fp32", "train_bf16"), the most
            (warm-up, repetitions) to use. The sliding-window image needs no warm-up of its own:
            its windows have the base size, already warmed up by the earlier sections.
        warmup, reps: warm-up calls and timed repetitions of the other items.
    """

    name: str
    config_file: str
    base_size: int
    sizes: Tuple[Tuple[int, int], ...]
    large_size: Tuple[int, int]
    window: int
    strides: Tuple[int, ...]
    vocab_sizes: Tuple[int, int] = (21, 1000)
    train_batch: int = 8
    text_dtype: str = "fp32"
    consumption_batch: Optional[int] = None
    caps: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    warmup: int = 1
    reps: int = 3

    def schedule(self, kind: str = "") -> Tuple[int, int]:
        """(warm-up, repetitions) for an item of this kind."""
        if kind in self.caps:
            warmup, reps = self.caps[kind]
            return min(self.warmup, warmup), max(1, min(self.reps, reps))
        return self.warmup, self.reps


def _round_to(value: float, multiple: int) -> int:
    """``value`` rounded down to a multiple of ``multiple`` (at least ``multiple``)."""
    return max(multiple, int(value // multiple) * multiple)


def profile_for(name: str, config_file: str, cfg, *, tiny: bool, warmup: int, reps: int) -> Profile:
    """The measurement plan of one config.

    The base size is the config's ``INPUT.MIN_SIZE_TEST`` (448 for ViT-B/16), or 64 in tiny mode
    (which also trains on batch 2 instead of 8); the large sliding-window image has the
    2048x1024 : 448 proportions (exactly 2048x1024 at 448).

    Args:
        name: key of the config in the results.
        config_file: the YAML file.
        cfg: the loaded config.
        tiny: the seconds-long plan used by the tests.
        warmup, reps: the command line's warm-up and repetitions.
    """
    base = 64 if tiny else int(cfg.INPUT.MIN_SIZE_TEST)
    patch = 16
    large = (_round_to(base * 1024 / 448, patch), _round_to(base * 2048 / 448, patch))
    overlap_stride = max(patch, round(base * 320 / 448 / patch) * patch)  # the eval configs' 448 / 320
    is_big = not tiny and cfg.MODEL.OPEN_CLIP.MODEL_NAME.startswith("ViT-")
    caps = {"size_large": (1, 2), "sliding": (0, 1), "train_fp32": (1, 1), "train_bf16": (1, 2)} if is_big else {}
    # The loader section is compared with the tiny config's training step at its own batch.
    consumption = int(cfg.SOLVER.IMS_PER_BATCH) if name == "tiny" and not tiny else None
    return Profile(
        name=name,
        config_file=config_file,
        base_size=base,
        sizes=tuple((s, s) for s in (base // 2, base, base * 2)),
        large_size=large,
        window=base,
        strides=(base, overlap_stride),
        train_batch=2 if tiny else 8,
        text_dtype="bf16" if is_big else "fp32",
        consumption_batch=consumption if consumption and consumption != 8 else None,
        caps=caps,
        warmup=warmup,
        reps=reps,
    )


def load_cfg(config_file: str, opts: Sequence[str] = ()):
    """A frozen-free Detectron2 config for CPU benchmarking (no test dataset).

    Inference is timed as the paper's, without a config's mask refinement, so that configs compare
    alike; ``opts`` can set ``MODEL.VILSEG.REFINE_ITERS`` to time it.
    """
    cfg = get_cfg()
    add_vilseg_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.VILSEG.REFINE_ITERS = 0
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TEST = ()
    return cfg


def synthetic_vocabulary(size: int) -> List[str]:
    """``size`` class names: PASCAL VOC for 21, else "class 0", "class 1", ..."""
    if size == len(PASCAL_VOC_CLASSES):
        return list(PASCAL_VOC_CLASSES)
    return [f"class {i}" for i in range(size)]


# --------------------------------------------------------------------------- measuring


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    print(f"[benchmark] {msg}", file=sys.stderr, flush=True)


def time_call(fn: Callable[[], object], warmup: int, reps: int) -> Dict:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` times timed.

    Returns:
        dict: ``median_s``, ``times_s`` (every repetition), ``warmup``, ``reps``.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": times, "warmup": warmup, "reps": reps}


def with_rate(measurement: Dict, items: float, unit: str = "images_per_s") -> Dict:
    """Add ``unit`` = items / median seconds to a :func:`time_call` result."""
    measurement[unit] = items / measurement["median_s"]
    return measurement


@contextlib.contextmanager
def precision(dtype: str):
    """fp32, or bf16 autocast on CPU."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        yield


@contextlib.contextmanager
def model_settings(model, **attrs):
    """Temporarily set attributes of the model (inference mode, sliding window)."""
    old = {k: getattr(model, k) for k in attrs}
    for k, v in attrs.items():
        setattr(model, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(model, k, v)


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A 3 x H x W uint8 image of uniform noise."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)


def backbone_input(model, image: torch.Tensor) -> torch.Tensor:
    """The normalised, patch-padded 1 x 3 x Hp x Wp tensor the full inference path feeds the backbone."""
    x = (image.to(model.device).float() - model.pixel_mean) / model.pixel_std
    return ImageList.from_tensors([x], size_divisibility=model.backbone.size_divisibility).tensor


def inference_call(model, image: torch.Tensor, vocabulary: List[str], dtype: str) -> Callable[[], object]:
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


# --------------------------------------------------------------------------- memory


def memory_status() -> Dict[str, int]:
    """Current and peak resident set size in bytes (``rss``, ``hwm``, ``anon``, ``file``), Linux."""
    keys = {"VmRSS": "rss", "VmHWM": "hwm", "RssAnon": "anon", "RssFile": "file"}
    out: Dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in keys:
                    out[keys[name]] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_peak_memory() -> bool:
    """Give freed heap back to the OS and reset the peak RSS to the current RSS.

    Returns:
        whether the reset worked (else the peak is the process' lifetime peak).
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- sections (in process)


def inference_section(model, profile: Profile, vocabulary: List[str]) -> Dict:
    """Backbone and the three modes at the base size, fp32 and bf16."""
    image = random_image(profile.base_size, profile.base_size)
    warmup, reps = profile.schedule()
    out: Dict[str, Dict] = {}
    for dtype in DTYPES:
        out[dtype] = {"backbone": with_rate(time_call(backbone_call(model, image, dtype), warmup, reps), 1)}
        for mode in MODES:
            with model_settings(model, inference_mode=mode):
                m = time_call(inference_call(model, image, vocabulary, dtype), warmup, reps)
            out[dtype][mode] = with_rate(m, 1)
            log(f"{profile.name} {dtype} {mode}: {m['median_s']:.3f} s")
    out["image_size"] = [profile.base_size, profile.base_size]
    out["vocabulary_size"] = len(vocabulary)
    out["beyond_backbone_s"] = {
        dtype: {mode: out[dtype][mode]["median_s"] - out[dtype]["backbone"]["median_s"] for mode in MODES}
        for dtype in DTYPES
    }  # each mode's own work (head or K-means, region pooling, text matching, upsampling, postprocess)
    return out


def vocabulary_section(model, profile: Profile, vocabularies: Dict[int, List[str]], text_seconds: Dict) -> Dict:
    """``online`` inference per vocabulary size, fp32 and bf16 (text features already cached)."""
    image = random_image(profile.base_size, profile.base_size)
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
        m = time_call(inference_call(model, random_image(h, w), vocabulary, dtype), *profile.schedule(kind))
        out[_size_key(h, w)] = dict(with_rate(m, 1), height=h, width=w, pixels=h * w, windows=1)
        log(f"{profile.name} {dtype} size {w}x{h}: {m['median_s']:.3f} s")
    h, w = profile.large_size
    image = random_image(h, w)
    for stride in profile.strides:
        with model_settings(model, inference_mode="online", sliding_window_size=profile.window,
                            sliding_window_stride=stride):  # fmt: skip
            m = time_call(inference_call(model, image, vocabulary, dtype), *profile.schedule("sliding"))
        windows = _num_windows(h, profile.window, stride) * _num_windows(w, profile.window, stride)
        key = _size_key(h, w, profile.window, stride)
        out[key] = dict(with_rate(m, 1), height=h, width=w, pixels=h * w, windows=windows,
                        window=profile.window, stride=stride)  # fmt: skip
        log(f"{profile.name} {dtype} {key} ({windows} windows): {m['median_s']:.3f} s")
    base_key = _size_key(profile.base_size, profile.base_size)
    for m in out.values():
        m["seconds_per_megapixel"] = m["median_s"] / (m["pixels"] / 1e6)
        m["time_over_area_proportional"] = (m["median_s"] / out[base_key]["median_s"]) / (
            m["pixels"] / out[base_key]["pixels"]
        )
    return {"dtype": dtype, "mode": "online", "vocabulary_size": len(vocabulary), "reference": base_key, "results": out}


def _num_windows(length: int, size: int, stride: int) -> int:
    """Windows along one side, as the model places them (the last one flush with the border)."""
    if length <= size:
        return 1
    starts = list(range(0, length - size + 1, stride))
    return len(starts) + (starts[-1] + size < length)


# --------------------------------------------------------------------------- subprocess jobs


def fake_training_batch(cfg, batch: int, seed: int = 0) -> List[Dict]:
    """``batch`` training dicts shaped like the caption mapper's output (random pixels)."""
    return training_samples(cfg, batch, seed)


def worker_jobs(profile: Profile) -> List[Dict]:
    """The subprocess' jobs: inference memory at the base size, then the training steps."""
    jobs = []
    for dtype in DTYPES:
        warmup, reps = profile.schedule()
        jobs.append({"name": f"inference_{dtype}", "kind": "inference", "dtype": dtype,
                     "size": profile.base_size, "vocabulary_size": profile.vocab_sizes[0],
                     "warmup": warmup, "reps": 1})  # fmt: skip
    for dtype in DTYPES:
        warmup, reps = profile.schedule(f"train_{dtype}")
        jobs.append({"name": f"train_{dtype}", "kind": "train", "dtype": dtype, "batch": profile.train_batch,
                     "warmup": warmup, "reps": reps})  # fmt: skip
    for dtype in DTYPES:  # open_clip's CLIP step, same batch and dtype
        warmup, reps = profile.schedule(f"train_{dtype}")
        job = {"name": f"clip_train_{dtype}", "kind": "clip_train", "dtype": dtype}
        jobs.append(dict(job, batch=profile.train_batch, warmup=warmup, reps=reps))
    if profile.consumption_batch:
        warmup, reps = profile.schedule("train_bf16")
        jobs.append({"name": f"train_bf16_batch{profile.consumption_batch}", "kind": "train", "dtype": "bf16",
                     "batch": profile.consumption_batch, "warmup": warmup, "reps": reps})  # fmt: skip
    return jobs


def _inference_job(model, cfg, job: Dict) -> Callable[[], object]:
    model.eval()
    vocab = synthetic_vocabulary(job["vocabulary_size"])
    cache_vocabulary(model, vocab, "fp32")
    return inference_call(model, random_image(job["size"], job["size"]), vocab, job["dtype"])


def _train_job(model, cfg, job: Dict) -> Callable[[], object]:
    batch = fake_training_batch(cfg, job["batch"])
    optimizer = build_vilseg_optimizer(cfg, model)
    dtype = torch.bfloat16 if job["dtype"] == "bf16" else None
    trainer = AutocastTrainer(model, itertools.repeat(batch), optimizer, dtype=dtype)
    # steps with all three objectives in force: past MODEL.VILSEG.AUX_WARMUP_ITERS (the model
    # reads the iteration from the event storage, as in a trainer)
    storage = get_event_storage()
    storage.iter = trainer.iter = int(cfg.MODEL.VILSEG.AUX_WARMUP_ITERS[1])

    def step():
        trainer.run_step()
        trainer.iter += 1
        storage.iter = trainer.iter

    return step


def _clip_train_job(model, cfg, job: Dict) -> Callable[[], object]:
    """open_clip's CLIP (image and text towers of the config's model name, random init) and
    ``ClipLoss``: one forward + backward + AdamW step through the same ``AutocastTrainer`` and
    optimizer settings as ViL-Seg's, on the job's batch (images at the tower's own size)."""
    clip = ClipTrainingModel.from_config(cfg).train()
    samples = clip_samples(job["batch"], clip.image_size)
    optimizer = build_vilseg_optimizer(cfg, clip)
    autocast_dtype = {"bf16": torch.bfloat16, "fp32": None}[job["dtype"]]
    clip_trainer = AutocastTrainer(clip, itertools.repeat(samples), optimizer, dtype=autocast_dtype)

    def clip_step():
        clip_trainer.run_step()
        clip_trainer.iter += 1

    return clip_step


def run_job(model, cfg, job: Dict) -> Dict:
    """Prepare one job, reset the peak RSS, time it, read the peak."""
    prepare = {"inference": _inference_job, "train": _train_job, "clip_train": _clip_train_job}
    prepare = prepare[job["kind"]]
    model.zero_grad(set_to_none=True)
    with EventStorage(0):
        fn = prepare(model, cfg, job)
        before = memory_status()
        reset_ok = reset_peak_memory()
        start = memory_status()
        m = time_call(fn, job["warmup"], job["reps"])
        end = memory_status()
    del fn
    items = job.get("batch", 1)
    training = job["kind"] in ("train", "clip_train")
    m = with_rate(m, items, "samples_per_s" if training else "images_per_s")
    m["memory"] = {
        "peak_rss_bytes": end.get("hwm", 0),
        "rss_at_start_bytes": start.get("rss", 0),
        "rss_before_trim_bytes": before.get("rss", 0),
        "peak_reset": reset_ok,
    }
    m.update({k: job[k] for k in ("dtype", "batch", "size", "vocabulary_size") if k in job})
    return m


def worker_main(spec_path: str) -> None:
    """Body of the ``--worker`` subprocess: build the model, run the jobs, write JSON."""
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    after_import = memory_status()
    cfg = load_cfg(spec["config_file"], spec["opts"])
    model = build_model(cfg)
    reset_peak_memory()
    after_build = memory_status()
    jobs = {}
    for job in spec["jobs"]:
        jobs[job["name"]] = run_job(model, cfg, job)
        mem = jobs[job["name"]]["memory"]
        mem["peak_over_import_bytes"] = mem["peak_rss_bytes"] - after_import.get("rss", 0)
        mem["peak_over_build_bytes"] = mem["peak_rss_bytes"] - after_build.get("rss", 0)
        log(f"[worker] {job['name']}: {jobs[job['name']]['median_s']:.3f} s, peak RSS "
            f"{mem['peak_rss_bytes'] / GIB:.2f} GiB")  # fmt: skip
    result = {
        "method": MEMORY_METHOD,
        "rss_after_import_bytes": after_import.get("rss", 0),
        "rss_after_build_bytes": after_build.get("rss", 0),
        "anon_after_build_bytes": after_build.get("anon", 0),
        "file_after_build_bytes": after_build.get("file", 0),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "jobs": jobs,
    }
    with open(spec["output"], "w", encoding="utf-8") as f:
        json.dump(result, f)


def run_worker(profile: Profile, opts: Sequence[str], threads: int) -> Dict:
    """Run :func:`worker_jobs` of ``profile`` in a fresh Python process and return its results."""
    with tempfile.TemporaryDirectory(prefix="vilseg_bench_") as tmp:
        spec = {
            "config_file": profile.config_file,
            "opts": list(opts),
            "threads": threads,
            "jobs": worker_jobs(profile),
            "output": os.path.join(tmp, "out.json"),
        }
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec_path], check=True)
        with open(spec["output"], encoding="utf-8") as f:
            return json.load(f)


# --------------------------------------------------------------------------- loader


def mapper_throughput(cfg, records: List[Dict], warmup: int, reps: int, chunk: int) -> Dict:
    """Samples/s of the caption mapper on one thread (torch and OpenCV), as one worker runs it."""
    import cv2

    from vilseg_d2.data import ViLSegCaptionDatasetMapper

    mapper = ViLSegCaptionDatasetMapper(cfg, True)
    cycle = itertools.cycle(records)
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        m = time_call(lambda: [mapper(next(cycle)) for _ in range(chunk)], warmup, reps)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    return dict(with_rate(m, chunk, "samples_per_s"), samples_per_repetition=chunk, threads=1)


def loader_throughput(cfg, num_workers: int, timed_batches: int) -> Dict:
    """Samples/s of ``build_caption_train_loader`` in steady state.

    The first ``num_workers * 2 + 1`` batches (worker start-up and the prefetched queue, the
    DataLoader's default prefetch factor being 2) are consumed untimed; then ``timed_batches``
    batches are timed one by one, the consumer taking each at once (no training step).
    """
    from vilseg_d2.data import build_caption_train_loader

    cfg = cfg.clone()
    cfg.DATALOADER.NUM_WORKERS = num_workers
    loader = build_caption_train_loader(cfg)
    it = iter(loader)
    warmup = num_workers * 2 + 1
    start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    startup = time.perf_counter() - start
    times = []
    for _ in range(timed_batches):
        t = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t)
    del it, loader
    batch = int(cfg.SOLVER.IMS_PER_BATCH)
    return {
        "num_workers": num_workers,
        "batch": batch,
        "warmup": warmup,
        "warmup_s": startup,
        "reps": timed_batches,
        "times_s": times,
        "median_s": statistics.median(times),
        "samples_per_s": batch * timed_batches / sum(times),
    }


def loader_section(opts: Sequence[str], tiny: bool, warmup: int, reps: int) -> Dict:
    """The mapper and the 2-worker loader on a temporary synthetic world (tiny config)."""
    from vilseg_d2.data import generate_synthetic_world, register_synthetic_world
    from vilseg_d2.data.caption_datasets import read_caption_manifest
    from detectron2.data import MetadataCatalog

    extra = ["SOLVER.IMS_PER_BATCH", 8] if tiny else []
    cfg = load_cfg(TINY_CONFIG, list(opts) + extra)
    num_train = 32 if tiny else 256
    with tempfile.TemporaryDirectory(prefix="vilseg_bench_world_") as root:
        start = time.perf_counter()
        generate_synthetic_world(root, num_train=num_train, num_val=0, num_workers=0)
        world_s = time.perf_counter() - start
        register_synthetic_world(root)
        name = cfg.DATASETS.TRAIN[0]
        meta = MetadataCatalog.get(name)
        records = read_caption_manifest(meta.manifest, meta.get("image_root")).records
        mapper = mapper_throughput(cfg, records, warmup, max(reps, 1), chunk=16 if tiny else 64)
        log(f"mapper: {mapper['samples_per_s']:.0f} samples/s on one thread")
        loader = loader_throughput(cfg, num_workers=2, timed_batches=2 if tiny else 8)
        log(f"loader (2 workers): {loader['samples_per_s']:.0f} samples/s")
    return {
        "config_file": TINY_CONFIG,
        "dataset": name,
        "world": {"num_train": num_train, "image_size": 128, "generation_s": world_s},
        "mapper": mapper,
        "loader": loader,
    }


# --------------------------------------------------------------------------- per config


def run_config(profile: Profile, args) -> Dict:
    """Every in-process section of one config, then its training / memory subprocess."""
    cfg = load_cfg(profile.config_file, args.opts)
    start = time.perf_counter()
    model = build_model(cfg).eval()
    out: Dict = {
        "config_file": os.path.relpath(profile.config_file, REPO),
        "model": cfg.MODEL.OPEN_CLIP.MODEL_NAME,
        "parameters": sum(p.numel() for p in model.parameters()),
        "clustering_head_parameters": sum(p.numel() for p in model.clustering_head.parameters()),
        "num_clusters": int(cfg.MODEL.VILSEG.NUM_CLUSTERS),
        "build_s": time.perf_counter() - start,
        "profile": asdict(profile),
    }
    vocabularies = {n: synthetic_vocabulary(n) for n in profile.vocab_sizes}
    text_seconds = {str(n): cache_vocabulary(model, v, profile.text_dtype) for n, v in vocabularies.items()}
    text_seconds["dtype"] = profile.text_dtype
    small = vocabularies[profile.vocab_sizes[0]]
    if "inference" in args.sections:
        out["inference"] = inference_section(model, profile, small)
    if "vocabulary" in args.sections:
        out["vocabulary"] = vocabulary_section(model, profile, vocabularies, text_seconds)
    if "sizes" in args.sections:
        out["sizes"] = sizes_section(model, profile, small)
    if "training" in args.sections:
        flops = training_flop_ratio(model, cfg)
        log(f"{profile.name} training FLOPs per sample, ViL-Seg / CLIP: {flops['ratio']:.2f}")
    del model
    gc.collect()
    if "training" in args.sections:
        try:
            worker = run_worker(profile, args.opts, args.threads)
        except subprocess.CalledProcessError as e:  # keep what was measured; main() exits with 1
            out["errors"] = [f"training/memory subprocess failed: {e}"]
            log(out["errors"][0])
            return out
        jobs = worker.pop("jobs")
        steps = ("train_", "clip_train_")
        out["training"] = {k: v for k, v in jobs.items() if k.startswith(steps)}
        out["clip_comparison"] = clip_comparison(out["training"], flops)
        out["training"]["views_per_sample"] = "1 global + %d local + 1 transformed" % cfg.INPUT.VILSEG.NUM_LOCAL_CROPS
        out["memory"] = dict(worker, **{k: v for k, v in jobs.items() if k.startswith("inference_")})
    return out


def clip_comparison(training: Dict, flops: Dict) -> Dict:
    """ViL-Seg's training step time over open_clip CLIP's, per dtype, next to the FLOP ratio.

    Args:
        training: the training jobs (``train_<dtype>``, ``clip_train_<dtype>``).
        flops: :func:`vilseg_d2.analysis.training_flop_ratio` of the config.
    """
    out: Dict = {"flops_per_sample": flops, "flop_ratio": flops["ratio"]}
    for dtype in DTYPES:
        vilseg, clip = training.get(f"train_{dtype}"), training.get(f"clip_train_{dtype}")
        if vilseg and clip:
            out[dtype] = {
                "batch": vilseg["batch"],
                "vilseg_step_s": vilseg["median_s"],
                "clip_step_s": clip["median_s"],
                "time_ratio": vilseg["median_s"] / clip["median_s"],
            }
    return out


# --------------------------------------------------------------------------- targets


def _target(name: str, measured: Optional[float], op: str, threshold: float, what: str) -> Optional[Dict]:
    if measured is None:
        return None
    met = measured <= threshold if op == "<=" else measured >= threshold
    return {"name": name, "measured": measured, "comparison": op, "threshold": threshold, "met": bool(met),
            "description": what}  # fmt: skip


def _get(d: Dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a / b


def config_targets(name: str, res: Dict) -> List[Dict]:
    """The issue's per-config targets that this run measured."""
    inf, voc = res.get("inference", {}), res.get("vocabulary", {})
    size = res["profile"]["base_size"]
    small, large = (str(n) for n in res["profile"]["vocab_sizes"])
    t = []
    for dtype in DTYPES:
        med = lambda item: _get(inf, dtype, item, "median_s")  # noqa: E731
        t.append(_target(f"{name}/online_over_backbone_{dtype}", _ratio(med("online"), med("backbone")), "<=", 1.10,
                         f"full online inference time / bare backbone time at {size}x{size}, {dtype}"))
        t.append(_target(f"{name}/online_speedup_over_kmeans_{dtype}", _ratio(med("kmeans"), med("online")), ">=",
                         1.15, f"kmeans time / online time at {size}x{size}, {dtype}"))
        t.append(_target(f"{name}/vocab{large}_over_vocab{small}_{dtype}",
                         _ratio(_get(voc, dtype, large, "median_s"), _get(voc, dtype, small, "median_s")), "<=", 1.05,
                         f"online time with {large} classes / with {small} classes, {dtype}"))
    t.append(_target(f"{name}/bf16_speedup_online", _ratio(_get(inf, "fp32", "online", "median_s"),
                     _get(inf, "bf16", "online", "median_s")), ">=", 2.0,
                     "full online inference fp32 time / bf16 time"))
    results = _get(res, "sizes", "results") or {}
    stride = res["profile"]["window"]
    for key, m in results.items():
        if m.get("stride") == stride:
            t.append(_target(f"{name}/sliding_window_linearity", m["time_over_area_proportional"], "<=", 1.2,
                             f"{key}: time / (time at {size}x{size} x area ratio)"))
    peak = _get(res, "memory", "inference_fp32", "memory", "peak_rss_bytes")
    t.append(_target(f"{name}/inference_peak_rss_gib", None if peak is None else peak / GIB, "<=", 1.5,
                     f"peak RSS of the whole process, online inference at {size}x{size}, fp32"))
    return [x for x in t if x is not None]  # fmt: skip


def target_configs(results: Dict) -> List[str]:
    """The configs the per-config targets are checked on: the issue states them for ViT-B/16 at
    448x448, so ViT-B/16 when it was measured; otherwise every measured config."""
    names = list(results["configs"])
    return ["vitb16"] if "vitb16" in names else names


def loader_target(results: Dict) -> List[Dict]:
    """Loader samples/s (2 workers) / samples/s the tiny config's bf16 training step consumes."""
    loader = _get(results, "loader", "loader", "samples_per_s")
    training = _get(results, "configs", "tiny", "training") or {}
    steps = [m for k, m in training.items() if k.startswith("train_bf16") and isinstance(m, dict)]
    if loader is None or not steps:
        return []
    step = max(steps, key=lambda m: m["batch"])  # the config's own batch when measured
    results.setdefault("loader", {})["consumption"] = {
        "training_job_batch": step["batch"], "step_median_s": step["median_s"],
        "samples_per_s": step["samples_per_s"], "dtype": "bf16",
    }  # fmt: skip
    return [_target("loader_over_training_consumption", loader / step["samples_per_s"], ">=", 1.5,
                    f"loader (2 workers) samples/s / tiny bf16 training step (batch {step['batch']}) samples/s")]  # fmt: skip


# --------------------------------------------------------------------------- report


def machine_info() -> Dict:
    """CPU model, cores, versions, thread counts, load."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def table_rows(results: Dict) -> List[Tuple[str, ...]]:
    """(config, item, dtype, median s, rate, reps) rows for the readable table."""
    rows = []
    for name, res in results["configs"].items():
        for dtype in DTYPES:
            for item, m in (_get(res, "inference", dtype) or {}).items():
                rows.append((name, f"{item} {res['inference']['image_size'][0]}px", dtype, m))
            for n, m in (_get(res, "vocabulary", dtype) or {}).items():
                rows.append((name, f"online, {n} classes", dtype, m))
        sizes = _get(res, "sizes") or {}
        for key, m in (sizes.get("results") or {}).items():
            label = f"online {key}" + (f" ({m['windows']} windows)" if m["windows"] > 1 else "")
            rows.append((name, label, sizes["dtype"], m))
        for key, m in (res.get("training") or {}).items():
            if isinstance(m, dict):
                step = "open_clip CLIP train step" if key.startswith("clip_") else "train step"
                rows.append((name, f"{step}, batch {m['batch']}", m["dtype"], m))
    loader = results.get("loader") or {}
    for key in ("mapper", "loader"):
        if key in loader:
            label = "caption mapper, 1 thread" if key == "mapper" else "train loader, 2 workers"
            rows.append(("tiny", label, "-", loader[key]))
    return [_format_row(*r) for r in rows]


def _format_row(config: str, item: str, dtype: str, m: Dict) -> Tuple[str, ...]:
    rate_key = next((k for k in ("images_per_s", "samples_per_s") if k in m), None)
    rate = f"{m[rate_key]:.2f} {'img' if rate_key == 'images_per_s' else 'samples'}/s" if rate_key else ""
    peak = _get(m, "memory", "peak_rss_bytes")
    mem = f"{peak / GIB:.2f}" if peak else ""
    return (config, item, dtype, f"{m['median_s']:.4f}", rate, mem, str(m.get("reps", "")))


def format_table(results: Dict) -> str:
    """Markdown tables: the measurements, then the targets."""
    header = ("config", "measurement", "dtype", "median s", "throughput", "peak RSS GiB", "reps")
    lines = [_md_row(header), _md_row(("---",) * len(header))]
    lines += [_md_row(r) for r in table_rows(results)]
    lines += clip_comparison_rows(results)
    lines += ["", _md_row(("target", "measured", "threshold", "met")), _md_row(("---",) * 4)]
    for t in results["targets"]:
        lines.append(_md_row((t["name"], f"{t['measured']:.3f}", f"{t['comparison']} {t['threshold']}",
                              "yes" if t["met"] else "**no**")))  # fmt: skip
    return "\n".join(lines)


def clip_comparison_rows(results: Dict) -> List[str]:
    """Markdown rows: ViL-Seg's and open_clip CLIP's step times and FLOPs, per config and dtype."""
    head = ("config", "dtype", "ViL-Seg step s", "CLIP step s", "time ratio", "FLOP ratio")
    rows = []
    for name, res in results["configs"].items():
        comparison = res.get("clip_comparison", {})
        for dtype in (d for d in DTYPES if d in comparison):
            c = comparison[dtype]
            seconds = (f"{c['vilseg_step_s']:.3f}", f"{c['clip_step_s']:.3f}")
            ratios = (f"{c['time_ratio']:.2f}", f"{comparison['flop_ratio']:.2f}")
            rows.append(_md_row((name, dtype, *seconds, *ratios)))
    return ["", _md_row(head), _md_row(("---",) * len(head))] + rows if rows else []


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# --------------------------------------------------------------------------- main


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="ViL-Seg CPU benchmark: inference, training and loader throughput.")
    p.add_argument("--config-file", action="append", metavar="FILE",
                   help="config to measure (repeatable); default: the ViT-B/16 and the tiny config")  # fmt: skip
    p.add_argument("--output", default="benchmark.json", help="JSON output path")
    p.add_argument("--tiny", action="store_true",
                   help="seconds-long check: tiny config only, small sizes, 1 repetition, no warm-up")  # fmt: skip
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3; tiny: 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up calls (default 1; tiny: 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    return p


def _config_name(path: str) -> str:
    if os.path.abspath(path) == VITB16_CONFIG:
        return "vitb16"
    if os.path.abspath(path) == TINY_CONFIG:
        return "tiny"
    return os.path.splitext(os.path.basename(path))[0]


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = get_parser().parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps if args.reps is not None else (1 if args.tiny else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 1)
    files = args.config_file or ([TINY_CONFIG] if args.tiny else [VITB16_CONFIG, TINY_CONFIG])
    files = [os.path.abspath(f) for f in files]
    start = time.perf_counter()
    results: Dict = {
        "machine": machine_info(),
        "settings": {"argv": sys.argv[1:] if argv is None else list(argv), "tiny": args.tiny, "reps": reps,
                     "warmup": warmup, "threads": torch.get_num_threads(), "sections": args.sections,
                     "opts": args.opts, "memory_method": MEMORY_METHOD},  # fmt: skip
        "configs": {},
    }
    for path in files:
        cfg = load_cfg(path, args.opts)
        profile = profile_for(_config_name(path), path, cfg, tiny=args.tiny, warmup=warmup, reps=reps)
        log(f"config {profile.name} ({os.path.relpath(path, REPO)})")
        results["configs"][profile.name] = run_config(profile, args)
    if "loader" in args.sections:
        results["loader"] = loader_section(args.opts, args.tiny, warmup, reps)
    results["targets"] = [t for name in target_configs(results) for t in config_targets(name, results["configs"][name])]
    results["targets"] += loader_target(results)
    results["total_s"] = time.perf_counter() - start
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(format_table(results))
    print(f"\n{results['machine']['cpu_model']}, {results['machine']['torch_threads']} torch threads, "
          f"torch {results['machine']['torch']}; total {results['total_s']:.0f} s; JSON: {args.output}")  # fmt: skip
    errors = [e for res in results["configs"].values() for e in res.get("errors", [])]
    if errors:
        raise SystemExit("Some measurements failed: " + "; ".join(errors))
    return results


if __name__ == "__main__":
    main()
