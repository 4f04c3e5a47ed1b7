"""The benchmark's report: the machine, the issue's targets (with ``met`` flags) and the readable
Markdown tables of the measurements, the ViL-Seg / CLIP step comparison and the targets."""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..analysis.planning import GIB
from .plan import DTYPES

__all__ = [
    "config_targets",
    "export_miou_target",
    "format_table",
    "format_training_profile",
    "loader_target",
    "machine_info",
    "target_configs",
]


def machine_info() -> Dict:
    """CPU model, cores, versions, thread counts, load."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            models = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            cpu = next(models, cpu)
    return {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
    }


def load_average() -> Optional[List[float]]:
    """The system's 1, 5 and 15 minute load averages (None where unknown)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# --------------------------------------------------------------------------- targets


def _target(
    name: str, measured: Optional[float], op: str, threshold: float, what: str
) -> Optional[Dict]:
    if measured is None:
        return None
    met = measured <= threshold if op == "<=" else measured >= threshold
    return {
        "name": name,
        "measured": measured,
        "comparison": op,
        "threshold": threshold,
        "met": bool(met),
        "description": what,
    }


def _get(d: Dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a / b


def _median(section: Dict, *keys) -> Optional[float]:
    return _get(section, *keys, "median_s")


def config_targets(name: str, res: Dict) -> List[Dict]:
    """The issue's per-config targets that this run measured."""
    inf, voc = res.get("inference", {}), res.get("vocabulary", {})
    size = res["profile"]["base_size"]
    px = f"{size}x{size}"
    small, large = (str(n) for n in res["profile"]["vocab_sizes"])
    t = []
    for dtype in DTYPES:
        backbone, online, kmeans = (
            _median(inf, dtype, k) for k in ("backbone", "online", "kmeans")
        )
        few, many = _median(voc, dtype, small), _median(voc, dtype, large)
        what = f"full online inference time / bare backbone time at {px}, {dtype}"
        key = f"{name}/online_over_backbone_{dtype}"
        t.append(_target(key, _ratio(online, backbone), "<=", 1.10, what))
        what = f"kmeans time / online time at {px}, {dtype}"
        key = f"{name}/online_speedup_over_kmeans_{dtype}"
        t.append(_target(key, _ratio(kmeans, online), ">=", 1.15, what))
        what = f"online time with {large} classes / with {small} classes, {dtype}"
        key = f"{name}/vocab{large}_over_vocab{small}_{dtype}"
        t.append(_target(key, _ratio(many, few), "<=", 1.05, what))
    fp32, bf16 = _median(inf, "fp32", "online"), _median(inf, "bf16", "online")
    what = "full online inference fp32 time / bf16 time"
    t.append(_target(f"{name}/bf16_speedup_online", _ratio(fp32, bf16), ">=", 2.0, what))
    results = _get(res, "sizes", "results") or {}
    stride = res["profile"]["window"]
    for key, m in results.items():
        if m.get("stride") == stride:
            what = f"{key}: time / (time at {px} x area ratio)"
            measured = m["time_over_area_proportional"]
            t.append(_target(f"{name}/sliding_window_linearity", measured, "<=", 1.2, what))
    exp = res.get("export") or {}
    ort, eager = _median(exp, "onnxruntime_fp32"), _median(exp, "pytorch_fp32")
    what = f"PyTorch eager fp32 time / onnxruntime fp32 time, online inference at {px}"
    t.append(_target(f"{name}/onnxruntime_speedup_fp32", _ratio(eager, ort), ">=", 1.2, what))
    peak = _get(res, "memory", "inference_fp32", "memory", "peak_rss_bytes")
    what = f"peak RSS of the whole process, online inference at {px}, fp32"
    gib = None if peak is None else peak / GIB
    t.append(_target(f"{name}/inference_peak_rss_gib", gib, "<=", 1.5, what))
    return [x for x in t if x is not None]


def export_miou_target(results: Dict) -> List[Dict]:
    """|mIoU through onnxruntime - mIoU through PyTorch| on the synthetic validation set."""
    diff = _get(results, "export_miou", "mIoU_abs_diff")
    what = "|mIoU onnxruntime - mIoU PyTorch|, demo model, synthetic validation set"
    target = _target("export_miou_abs_diff", diff, "<=", 0.1, what)
    return [target] if target else []


def target_configs(results: Dict) -> List[str]:
    """The configs the per-config targets are checked on: the issue states them for ViT-B/16 at
    448x448, so ViT-B/16 when it was measured; otherwise every measured config."""
    names = list(results["configs"])
    return ["vitb16"] if "vitb16" in names else names


def loader_target(results: Dict) -> List[Dict]:
    """Loader samples/s (2 workers) / samples/s the tiny config's bf16 training step consumes.

    Also records that step as ``results["loader"]["consumption"]``.
    """
    loader = _get(results, "loader", "loader", "samples_per_s")
    training = _get(results, "configs", "tiny", "training") or {}
    steps = [m for k, m in training.items() if k.startswith("train_bf16") and isinstance(m, dict)]
    if loader is None or not steps:
        return []
    step = max(steps, key=lambda m: m["batch"])  # the config's own batch when measured
    results.setdefault("loader", {})["consumption"] = {
        "training_job_batch": step["batch"],
        "step_median_s": step["median_s"],
        "samples_per_s": step["samples_per_s"],
        "dtype": "bf16",
    }
    what = (
        f"loader (2 workers) samples/s / tiny bf16 training step (batch {step['batch']}) "
        "samples/s"
    )
    measured = loader / step["samples_per_s"]
    return [_target("loader_over_training_consumption", measured, ">=", 1.5, what)]


# --------------------------------------------------------------------------- tables


def table_rows(results: Dict) -> List[Tuple[str, ...]]:
    """(config, item, dtype, median s, rate, peak RSS, reps) rows for the readable table."""
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
        exp = res.get("export") or {}
        for key in ("onnxruntime_fp32", *(f"pytorch_{d}" for d in DTYPES)):
            if key in exp:
                runtime = "onnxruntime" if key.startswith("onnx") else "PyTorch eager"
                size = exp["image_size"][0]
                rows.append((name, f"online {size}px, {runtime}", key.rsplit("_", 1)[1], exp[key]))
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
    rate = ""
    if rate_key:
        rate = f"{m[rate_key]:.2f} {'img' if rate_key == 'images_per_s' else 'samples'}/s"
    peak = _get(m, "memory", "peak_rss_bytes")
    mem = f"{peak / GIB:.2f}" if peak else ""
    return (config, item, dtype, f"{m['median_s']:.4f}", rate, mem, str(m.get("reps", "")))


def format_table(results: Dict) -> str:
    """Markdown tables: the measurements, then the targets."""
    header = ("config", "measurement", "dtype", "median s", "throughput", "peak RSS GiB", "reps")
    lines = [_md_row(header), _md_row(("---",) * len(header))]
    lines += [_md_row(r) for r in table_rows(results)]
    lines += clip_comparison_rows(results)
    lines += export_rows(results)
    lines += ["", _md_row(("target", "measured", "threshold", "met")), _md_row(("---",) * 4)]
    for t in results["targets"]:
        threshold = f"{t['comparison']} {t['threshold']}"
        met = "yes" if t["met"] else "**no**"
        lines.append(_md_row((t["name"], f"{t['measured']:.3f}", threshold, met)))
    return "\n".join(lines)


def export_rows(results: Dict) -> List[str]:
    """Markdown rows: per config the exported file and onnxruntime's speed-up over PyTorch, then
    the mIoU through both."""
    head = ("config", "ONNX MiB", "speed-up over eager fp32", "over eager bf16", "max abs diff")
    rows = []
    for name, res in results["configs"].items():
        exp = res.get("export")
        if exp:
            speedup = exp["speedup_over_pytorch"]
            rows.append(_md_row((name, f"{exp['model_bytes'] / 2**20:.1f}",
                                 f"{speedup['fp32']:.2f}x", f"{speedup['bf16']:.2f}x",
                                 f"{exp['parity']['max_abs_diff']:.1e}")))  # fmt: skip
    miou = results.get("export_miou") or {}
    if "mIoU_pytorch" in miou:
        rows.append(f"\nmIoU on {miou['images']} synthetic validation images ({miou['model']}): "
                    f"PyTorch {miou['mIoU_pytorch']:.2f}, onnxruntime "
                    f"{miou['mIoU_onnxruntime']:.2f}")  # fmt: skip
    elif "skipped" in miou:
        rows.append(f"\nmIoU through onnxruntime: skipped ({miou['skipped']})")
    return ["", _md_row(head), _md_row(("---",) * len(head))] + rows if rows else []


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


def format_training_profile(profile: Dict) -> str:
    """The training profile as a Markdown table: before / now medians and the speed-up, then the
    compiled and loader-fed variants where measured."""
    rows = [_md_row(("step", "variant", "before s", "now s", "speed-up", "reps"))]
    rows.append(_md_row(("---",) * 6))

    def row(name: str, variant: str, before: Optional[float], now: float, reps: int) -> str:
        speedup = f"{before / now:.2f}x" if before else ""
        before_s = f"{before:.3f}" if before else ""
        return _md_row((name, variant, before_s, f"{now:.3f}", speedup, str(reps)))

    for name, res in profile.items():
        before = res["before"]["median_s"]
        variant = f"batch {res['batch']}, {res['dtype']}"
        rows.append(row(name, variant, before, res["now"]["median_s"], res["now"]["reps"]))
        if "fed" in res:
            fed = res["fed"]
            rows.append(row(name, "fed by its loader (1 worker)", fed["before"]["median_s"],
                            fed["now"]["median_s"], fed["now"]["reps"]))  # fmt: skip
        if "compile" in res:
            c = res["compile"]
            variant = f"SOLVER.COMPILE (compile {c['compile_s']:.0f} s)"
            rows.append(row(name, variant, before, c["median_s"], c["reps"]))
    return "\n".join(rows)
