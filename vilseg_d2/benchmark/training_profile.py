"""``tools/benchmark.py --profile training``: the training step before and after its CPU tuning,
A/B in one process.

Each step is built twice from the same seed (the same weights and batch): "before" with the
settings of the untuned step (:data:`BEFORE_OPTS`: open_clip's own attention, a contiguous conv
stem, the whole text context, multi-tensor AdamW), "now" with the config's. Their steps
alternate (before, now, before, ...) so that a drift of the machine's speed falls on both; each
figure is the median of the repetitions after the warm-up. For every step the JSON has both
medians, every repetition, the speed-up, and the top operators of ``torch.profiler`` for both
variants. The tiny config's L_cross step is also timed with ``SOLVER.COMPILE`` (its compile time
separately), and fed by its real caption loader (one worker) from a small synthetic world, with
the batch crossing from the worker per image (before) or packed (now).
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from ..analysis import training_iteration, training_samples
from ..engine import AutocastTrainer, build_vilseg_optimizer, compile_transformers
from .harness import log
from .plan import load_cfg

__all__ = ["BEFORE_OPTS", "StepSpec", "default_steps", "training_profile"]

# The untuned step: what the training step was before the CPU tuning (the trainer's math-attention
# context stays in force, as it was then).
BEFORE_OPTS = (
    "MODEL.OPEN_CLIP.ATTENTION", "native",
    "MODEL.CLIP_VIT.CHANNELS_LAST", "False",
    "MODEL.VILSEG.TEXT.TRIM_PADDING", "False",
    "SOLVER.FUSED_OPTIMIZER", "False",
)  # fmt: skip


@dataclass
class StepSpec:
    """One training step to measure.

    Attributes:
        name: key in the JSON.
        config_file: the config.
        phase: "cross" (L_cross alone, iteration 0 of a config with AUX_WARMUP_ITERS) or "all"
            (all three objectives in force).
        batch: images per step.
        dtype: "bf16" (autocast) or "fp32".
        warmup, reps: untimed and timed steps of each variant.
        compile: also time it with SOLVER.COMPILE.
        fed: also time it fed by its caption loader.
    """

    name: str
    config_file: str
    phase: str
    batch: int
    dtype: str = "bf16"
    warmup: int = 2
    reps: int = 5
    compile: bool = False
    fed: bool = False


def default_steps(tiny_config: str, vitb16_config: str, quick: bool = False) -> List[StepSpec]:
    """The demo config's L_cross and all-objective steps at its batch, and ViT-B/16's step at
    batch 8; ``quick``: the tiny config at batch 8, one repetition (for the tests)."""
    if quick:
        return [StepSpec("tiny_cross", tiny_config, "cross", 8, warmup=0, reps=1)]
    return [
        StepSpec("tiny_cross", tiny_config, "cross", 256, compile=True, fed=True),
        StepSpec("tiny_all", tiny_config, "all", 256, warmup=1, reps=4),
        StepSpec("vitb16_all", vitb16_config, "all", 8, warmup=1, reps=3),
    ]


def _iteration(cfg, phase: str) -> int:
    if phase == "cross":
        if int(cfg.MODEL.VILSEG.AUX_WARMUP_ITERS[0]) <= 0:
            raise ValueError("The 'cross' phase needs a config whose AUX_WARMUP_ITERS start > 0.")
        return 0
    return training_iteration(cfg)


def _stepper(cfg, spec: StepSpec, data) -> Tuple[AutocastTrainer, Callable[[], None]]:
    """A trainer of ``cfg``'s model on ``data`` (an iterable of batches) and its step at the
    phase's iteration (held there, so that every step has the same objectives)."""
    seed_all_rng(0)
    model = build_model(cfg).train()
    if cfg.SOLVER.COMPILE:
        compile_transformers(model)
    optimizer = build_vilseg_optimizer(cfg, model)
    dtype = torch.bfloat16 if spec.dtype == "bf16" else None
    trainer = AutocastTrainer(model, data, optimizer, dtype=dtype)
    iteration = _iteration(cfg, spec.phase)

    def step():
        from detectron2.utils.events import get_event_storage

        get_event_storage().iter = trainer.iter = iteration
        trainer.run_step()

    return trainer, step


def _top_operators(step: Callable[[], None], steps: int = 2, top: int = 12) -> List[Dict]:
    """The operators with the most self CPU time over ``steps`` steps, per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "name": e.key,
            "self_cpu_ms_per_step": e.self_cpu_time_total / 1000.0 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in events[:top]
    ]


def _alternate(fns: Dict[str, Callable[[], None]], warmup: int, reps: int) -> Dict[str, Dict]:
    """Time the callables in turn, ``warmup`` untimed rounds then ``reps`` timed ones."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {
        k: {"median_s": statistics.median(v), "times_s": v, "warmup": warmup, "reps": reps}
        for k, v in times.items()
    }


def _fed_loader(cfg, world: str, packed: bool):
    """The caption loader of ``cfg`` on the synthetic world in ``world``, one worker."""
    from detectron2.data.build import trivial_batch_collator

    from ..data.build import build_caption_train_loader
    from ..data.caption_mapper import ViLSegCaptionDatasetMapper
    from ..data.collate import caption_batch_collator

    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TRAIN = ("benchmark_synthetic_captions",)
    cfg.DATASETS.CAPTION_DATASETS = (
        f"name=benchmark_synthetic_captions,manifest={os.path.join(world, 'train.jsonl')}",
    )
    cfg.DATALOADER.NUM_WORKERS = 1
    mapper = ViLSegCaptionDatasetMapper(cfg, True, local_crops=False, transformed_view=False)
    collate = caption_batch_collator if packed else trivial_batch_collator
    return build_caption_train_loader(cfg, mapper, collate_fn=collate)


def _measure(spec: StepSpec, opts: Sequence[str]) -> Dict:
    log(f"training profile: {spec.name} ({spec.phase}, batch {spec.batch}, {spec.dtype})")
    cfgs = {
        "before": load_cfg(spec.config_file, [*opts, *BEFORE_OPTS]),
        "now": load_cfg(spec.config_file, opts),
    }
    samples = training_samples(cfgs["now"], spec.batch)
    out: Dict = {"config_file": spec.config_file, "phase": spec.phase, "batch": spec.batch,
                 "dtype": spec.dtype, "before_opts": list(BEFORE_OPTS)}  # fmt: skip
    with EventStorage(0):
        steppers = {k: _stepper(cfg, spec, itertools.repeat(samples)) for k, cfg in cfgs.items()}
        timed = _alternate({k: s for k, (_, s) in steppers.items()}, spec.warmup, spec.reps)
        out.update(timed)
        out["speedup"] = timed["before"]["median_s"] / timed["now"]["median_s"]
        out["top_operators"] = {k: _top_operators(s) for k, (_, s) in steppers.items()}
        del steppers
        if spec.compile:
            out["compile"] = _compiled(spec, opts, samples)
        if spec.fed:
            out["fed"] = _fed(spec, cfgs)
    log(
        f"training profile: {spec.name}: before {out['before']['median_s']:.3f} s, now "
        f"{out['now']['median_s']:.3f} s ({out['speedup']:.2f}x)"
    )
    return out


def _compiled(spec: StepSpec, opts: Sequence[str], samples) -> Dict:
    """The step with SOLVER.COMPILE: its first step (compilation included) and its median."""
    cfg = load_cfg(spec.config_file, [*opts, "SOLVER.COMPILE", "True"])
    _, step = _stepper(cfg, spec, itertools.repeat(samples))
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    timed = _alternate({"compiled": step}, 1, spec.reps)["compiled"]
    timed["first_step_s"] = first
    timed["compile_s"] = first - timed["median_s"]
    return timed


def _fed(spec: StepSpec, cfgs: Dict) -> Dict:
    """The step fed by its caption loader (one worker) from a small synthetic world: before
    (the untuned model, the batch crossing per image) and now, alternating."""
    from ..data import generate_synthetic_world

    steps = 2 * (spec.warmup + spec.reps) + 4
    with tempfile.TemporaryDirectory(prefix="vilseg_bench_world_") as world:
        generate_synthetic_world(world, num_train=spec.batch * (steps + 2), num_val=0)
        fns = {}
        for k, cfg in cfgs.items():
            loader = _fed_loader(cfg, world, packed=k == "now")
            fns[k] = _stepper(cfg, spec, loader)[1]
        timed = _alternate(fns, spec.warmup, spec.reps)
    timed["speedup"] = timed["before"]["median_s"] / timed["now"]["median_s"]
    timed["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    return timed


def training_profile(steps: Sequence[StepSpec], opts: Sequence[str] = ()) -> Dict:
    """Measure ``steps``; returns {step name: results}."""
    return {spec.name: _measure(spec, opts) for spec in steps}
