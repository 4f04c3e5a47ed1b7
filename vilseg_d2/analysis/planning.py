"""Planning a GPU run from measured counts: images per GPU that fit, and a step's TFLOPs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

__all__ = ["GIB", "DEFAULT_GPU_GIB", "Margins", "images_per_gpu", "plan_run", "format_plan"]

GIB = 1024**3
# Cards' nominal sizes are GiB (a "40 GB" A100 has 40,960 MiB): V100 16, A10/4090 24, A100 40/80.
DEFAULT_GPU_GIB = (16, 24, 40, 80)
CHECKPOINTING = ("no_checkpointing", "checkpointing")


@dataclass(frozen=True)
class Margins:
    """What is kept free of a card besides the training state and the saved activations.

    Attributes:
        fraction: share of the card for the allocator's fragmentation and backward's transient
            buffers (activation gradients, the losses' intermediates).
        reserve_gib: the CUDA context, cuBLAS / cuDNN workspaces and NCCL's buffers.
    """

    fraction: float = 0.10
    reserve_gib: float = 1.5

    def usable_bytes(self, gpu_gib: float) -> float:
        return gpu_gib * GIB * (1 - self.fraction) - self.reserve_gib * GIB


def images_per_gpu(usable: float, static: float, fixed: float, per_image: float) -> int:
    """How many images fit in ``usable`` bytes next to ``static`` + ``fixed`` bytes, at
    ``per_image`` bytes each (0 if not even one)."""
    if per_image <= 0:
        raise ValueError(f"per-image bytes must be positive, got {per_image}.")
    return max(0, math.floor((usable - static - fixed) / per_image))


def plan_run(
    state: Dict[str, int],
    activations: Dict[str, Dict],
    *,
    batch: int,
    num_gpus: int,
    num_blocks: int,
    flops: Optional[Dict] = None,
    gpu_gib: Sequence[float] = DEFAULT_GPU_GIB,
    margins: Margins = Margins(),
) -> Dict:
    """Images per GPU at each card size, with and without gradient checkpointing.

    Memory = weights + gradients + AdamW + DDP buckets (``state``) + fixed activations + images
    x per-image activations, within :meth:`Margins.usable_bytes`. With checkpointing, backward
    recomputes one block at a time and holds its activations meanwhile: each image also needs
    one block's share, (per-image bytes without - with checkpointing) / ``num_blocks``.

    Args:
        state: :func:`~vilseg_d2.analysis.memory.state_bytes`.
        activations: ``{"no_checkpointing": ..., "checkpointing": ...}``, each a half-precision
            :func:`~vilseg_d2.analysis.memory.activation_memory` result.
        batch: the config's global batch (``SOLVER.IMS_PER_BATCH``).
        num_gpus: GPUs it is spread over.
        num_blocks: transformer blocks of the checkpointed image tower.
        flops: :func:`~vilseg_d2.analysis.flops.training_flops` (adds the step's TFLOPs).
        gpu_gib: card sizes.
        margins: what is kept free.
    """
    static = sum(state.values())
    recompute = (
        activations["no_checkpointing"]["per_sample"] - activations["checkpointing"]["per_sample"]
    ) / num_blocks
    per_image = {
        "no_checkpointing": activations["no_checkpointing"]["per_sample"],
        "checkpointing": activations["checkpointing"]["per_sample"] + max(recompute, 0.0),
    }
    fixed = {k: activations[k]["fixed"] for k in CHECKPOINTING}
    rows: List[Dict] = []
    for gib in gpu_gib:
        usable = margins.usable_bytes(gib)
        fits = {k: images_per_gpu(usable, static, fixed[k], per_image[k]) for k in CHECKPOINTING}
        rows.append({"gpu_gib": gib, "usable_bytes": int(usable), "images_per_gpu": fits})
    per_gpu = batch / num_gpus
    out = {
        "margins": asdict(margins),
        "state_bytes": dict(state, total=static),
        "fixed_activation_bytes": fixed,
        "per_image_bytes": per_image,
        "checkpoint_recompute_bytes_per_image": int(max(recompute, 0.0)),
        "rows": rows,
        "config": {
            "batch": batch,
            "num_gpus": num_gpus,
            "images_per_gpu": per_gpu,
            "fits": {
                f"{r['gpu_gib']:g}": {k: r["images_per_gpu"][k] >= per_gpu for k in CHECKPOINTING}
                for r in rows
            },
        },
    }
    if flops:
        out["step"] = {
            "batch": batch,
            "tflops": flops["forward_backward"] * batch / 1e12,
            "tflops_checkpointing": flops["forward_backward_checkpointed"] * batch / 1e12,
            "convention": "fvcore: one multiply-add = one flop; backward = 2 x forward "
            "(hardware FLOPs: x 2)",
        }
    return out


def format_plan(plan: Dict, title: str = "") -> str:
    """The plan as a Markdown table and a few lines of totals."""
    mib = 1024**2
    per_gpu = plan["config"]["images_per_gpu"]
    lines = [title] if title else []
    lines += [
        "| GPU memory | usable | images/GPU | images/GPU, GRAD_CHECKPOINTING "
        f"| {per_gpu:g}/GPU fits |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in plan["rows"]:
        fits = plan["config"]["fits"][f"{row['gpu_gib']:g}"]
        verdict = "with checkpointing" if fits["checkpointing"] else "no"
        verdict = "yes" if fits["no_checkpointing"] else verdict
        n = row["images_per_gpu"]
        usable = row["usable_bytes"] / GIB
        lines.append(
            f"| {row['gpu_gib']:g} GiB | {usable:.1f} GiB | {n['no_checkpointing']} "
            f"| {n['checkpointing']} | {verdict} |"
        )
    state = {k: v / GIB for k, v in plan["state_bytes"].items()}
    per_image = {k: v / mib for k, v in plan["per_image_bytes"].items()}
    fixed = {k: v / mib for k, v in plan["fixed_activation_bytes"].items()}
    recompute = plan["checkpoint_recompute_bytes_per_image"] / mib
    m, config = plan["margins"], plan["config"]
    lines += [
        "",
        f"Training state {state['total']:.2f} GiB: weights {state['weights']:.2f} + gradients "
        f"{state['gradients']:.2f} + AdamW {state['adamw']:.2f} + DDP buckets "
        f"{state['ddp_buckets']:.2f} (fp32).",
        "Activations kept for backward, half precision, per image: "
        f"{per_image['no_checkpointing']:.1f} MiB; with checkpointing "
        f"{per_image['checkpointing']:.1f} MiB (incl. one recomputed block, {recompute:.1f} MiB); "
        f"fixed {fixed['no_checkpointing']:.0f} / {fixed['checkpointing']:.0f} MiB.",
        f"Usable = card x {1 - m['fraction']:.2f} - {m['reserve_gib']:g} GiB (CUDA context, "
        f"workspaces, NCCL). Config: batch {config['batch']} on {config['num_gpus']} GPUs = "
        f"{per_gpu:g} images/GPU.",
    ]
    if "step" in plan:
        s = plan["step"]
        lines.append(
            f"One training step at batch {s['batch']}: {s['tflops']:.1f} TFLOPs "
            f"({s['tflops_checkpointing']:.1f} with checkpointing); {s['convention']}."
        )
    return "\n".join(lines)
