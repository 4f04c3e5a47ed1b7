"""The ``training`` section: a fresh subprocess per config (``python -m
vilseg_d2.benchmark.worker SPEC``) builds the model once and runs a list of jobs, each timed from
a freshly reset peak RSS: online inference at the base size (its peak memory), then one
training iteration (forward + backward + AdamW step through the project's ``AutocastTrainer``)
of ViL-Seg and of open_clip's own CLIP, fp32 and bf16. :func:`clip_comparison` puts the two
steps' times next to their training FLOPs."""

from __future__ import annotations

import itertools
import json
import sys
from typing import Callable, Dict, List, Sequence

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage, get_event_storage

from ..analysis import ClipTrainingModel, clip_samples, training_iteration, training_samples
from ..analysis.planning import GIB
from ..engine import AutocastTrainer, build_vilseg_optimizer
from .harness import (
    MEMORY_METHOD,
    log,
    memory_status,
    reset_peak_memory,
    run_subprocess,
    time_with_peak_memory,
    with_rate,
)
from .inference import cache_vocabulary, inference_call, noise_image
from .plan import DTYPES, Profile, load_cfg, synthetic_vocabulary

__all__ = ["clip_comparison", "run_job", "run_worker", "worker_jobs", "worker_main"]


def worker_jobs(profile: Profile) -> List[Dict]:
    """The subprocess' jobs: inference memory at the base size, then the training steps."""
    jobs = []
    for dtype in DTYPES:
        warmup, reps = profile.schedule()
        job = {"name": f"inference_{dtype}", "kind": "inference", "dtype": dtype}
        size = {"size": profile.base_size, "vocabulary_size": profile.vocab_sizes[0]}
        jobs.append(dict(job, **size, warmup=warmup, reps=1))
    for dtype in DTYPES:
        warmup, reps = profile.schedule(f"train_{dtype}")
        job = {"name": f"train_{dtype}", "kind": "train", "dtype": dtype}
        jobs.append(dict(job, batch=profile.train_batch, warmup=warmup, reps=reps))
    for dtype in DTYPES:  # open_clip's CLIP step, same batch and dtype
        warmup, reps = profile.schedule(f"train_{dtype}")
        job = {"name": f"clip_train_{dtype}", "kind": "clip_train", "dtype": dtype}
        jobs.append(dict(job, batch=profile.train_batch, warmup=warmup, reps=reps))
    if profile.consumption_batch:
        warmup, reps = profile.schedule("train_bf16")
        name = f"train_bf16_batch{profile.consumption_batch}"
        job = {"name": name, "kind": "train", "dtype": "bf16"}
        jobs.append(dict(job, batch=profile.consumption_batch, warmup=warmup, reps=reps))
    return jobs


def _inference_job(model, cfg, job: Dict) -> Callable[[], object]:
    model.eval()
    vocab = synthetic_vocabulary(job["vocabulary_size"])
    cache_vocabulary(model, vocab, "fp32")
    return inference_call(model, noise_image(job["size"], job["size"]), vocab, job["dtype"])


def _train_job(model, cfg, job: Dict) -> Callable[[], object]:
    batch = training_samples(cfg, job["batch"])
    optimizer = build_vilseg_optimizer(cfg, model)
    dtype = torch.bfloat16 if job["dtype"] == "bf16" else None
    trainer = AutocastTrainer(model, itertools.repeat(batch), optimizer, dtype=dtype)
    # steps with all three objectives in force: past MODEL.VILSEG.AUX_WARMUP_ITERS (the model
    # reads the iteration from the event storage, as in a trainer)
    storage = get_event_storage()
    storage.iter = trainer.iter = training_iteration(cfg)

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
        m, memory = time_with_peak_memory(fn, job["warmup"], job["reps"])
    del fn
    items = job.get("batch", 1)
    training = job["kind"] in ("train", "clip_train")
    m = with_rate(m, items, "samples_per_s" if training else "images_per_s")
    m["memory"] = memory
    m.update({k: job[k] for k in ("dtype", "batch", "size", "vocabulary_size") if k in job})
    return m


def worker_main(spec_path: str) -> None:
    """Body of the subprocess: build the model, run the jobs, write JSON."""
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
        seconds, peak = jobs[job["name"]]["median_s"], mem["peak_rss_bytes"] / GIB
        log(f"[worker] {job['name']}: {seconds:.3f} s, peak RSS {peak:.2f} GiB")
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
    """Run :func:`worker_jobs` of ``profile`` in a fresh Python process and return its results.

    Raises:
        subprocess.CalledProcessError: the subprocess failed.
    """
    spec = {
        "config_file": profile.config_file,
        "opts": list(opts),
        "threads": threads,
        "jobs": worker_jobs(profile),
    }
    return run_subprocess(__name__, spec)


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


if __name__ == "__main__":
    worker_main(sys.argv[1])
