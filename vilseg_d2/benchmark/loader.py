"""The ``loader`` section: the caption mapper's samples/s on one thread and the training loader's
samples/s with 2 workers, on a small synthetic world written to a temporary folder."""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from typing import Dict, List, Sequence

import torch

from .harness import log, time_call, with_rate
from .plan import load_cfg

__all__ = ["loader_section", "loader_throughput", "mapper_throughput"]


def mapper_throughput(cfg, records: List[Dict], warmup: int, reps: int, chunk: int) -> Dict:
    """Samples/s of the caption mapper on one thread (torch and OpenCV), as one worker runs it."""
    import cv2

    from ..data import ViLSegCaptionDatasetMapper

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
    from ..data import build_caption_train_loader

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


def loader_section(
    config_file: str, opts: Sequence[str], tiny: bool, warmup: int, reps: int
) -> Dict:
    """The mapper and the 2-worker loader of ``config_file`` (the tiny config) on a temporary
    synthetic world."""
    from detectron2.data import MetadataCatalog

    from ..data import generate_synthetic_world, register_synthetic_world
    from ..data.caption_datasets import read_caption_manifest

    extra = ["SOLVER.IMS_PER_BATCH", 8] if tiny else []
    cfg = load_cfg(config_file, list(opts) + extra)
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
        "config_file": config_file,
        "dataset": name,
        "world": {"num_train": num_train, "image_size": 128, "generation_s": world_s},
        "mapper": mapper,
        "loader": loader,
    }
