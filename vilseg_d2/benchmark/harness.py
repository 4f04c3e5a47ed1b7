"""The benchmark's measuring tools: timing (warm-up, repetitions, medians), precision and model
settings, resident memory (current RSS, its peak, resetting the peak), and a fresh Python
subprocess that runs a list of jobs and answers in JSON."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Tuple

import torch

__all__ = [
    "MEMORY_METHOD",
    "log",
    "memory_status",
    "model_settings",
    "precision",
    "reset_peak_memory",
    "run_subprocess",
    "time_call",
    "time_with_peak_memory",
    "with_rate",
]

MEMORY_METHOD = (
    "Peak resident set size (Linux VmHWM) of a fresh subprocess per config, which builds the "
    "model, caches the vocabulary, then for each job calls malloc_trim(0), resets the high-water "
    "mark (echo 5 > /proc/self/clear_refs) and runs the job's warm-up and repetitions. "
    "peak_rss_bytes is the whole process (interpreter, torch and other libraries, model weights, "
    "activations, optimizer state); peak_over_import_bytes subtracts the RSS after the imports; "
    "peak_over_build_bytes subtracts the RSS with the model built (what the job itself needs)."
)


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    print(f"[benchmark] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- timing


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


def model_settings(model, **attrs):
    """Temporarily set inference settings of the model (inference mode, sliding window): a
    context manager, :meth:`~vilseg_d2.modeling.segmenter.SegmenterSettings.settings`."""
    return model.settings(**attrs)


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


def time_with_peak_memory(fn: Callable[[], object], warmup: int, reps: int) -> Tuple[Dict, Dict]:
    """:func:`time_call` of ``fn`` from a freshly reset peak RSS.

    Returns:
        the :func:`time_call` result, and the memory: ``peak_rss_bytes`` (the peak over the
        warm-up and repetitions), ``rss_at_start_bytes`` (after the reset),
        ``rss_before_trim_bytes`` and ``peak_reset`` (whether the peak could be reset).
    """
    before = memory_status()
    reset_ok = reset_peak_memory()
    start = memory_status()
    m = time_call(fn, warmup, reps)
    end = memory_status()
    memory = {
        "peak_rss_bytes": end.get("hwm", 0),
        "rss_at_start_bytes": start.get("rss", 0),
        "rss_before_trim_bytes": before.get("rss", 0),
        "peak_reset": reset_ok,
    }
    return m, memory


# --------------------------------------------------------------------------- subprocess


def run_subprocess(module: str, spec: Dict) -> Dict:
    """Run ``python -m module SPEC`` in a fresh process and return the JSON it writes.

    The module reads the JSON file SPEC (``spec`` plus ``output``, the path to write its result
    to). The subprocess imports this ``vilseg_d2`` (its folder first on ``PYTHONPATH``).

    Raises:
        subprocess.CalledProcessError: the subprocess failed.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="vilseg_bench_") as tmp:
        spec = dict(spec, output=os.path.join(tmp, "out.json"))
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        cmd = [sys.executable, "-m", module, spec_path]
        subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=path))
        with open(spec["output"], encoding="utf-8") as f:
            return json.load(f)
