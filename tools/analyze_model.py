#!/usr/bin/env python
"""Parameters, FLOPs, activations and training memory of a ViL-Seg config, and a GPU run plan.

In the idiom of Detectron2's ``tools/analyze_model.py`` (fvcore's counters on a model built by
``build_model``), for ViL-Seg's two kinds of input: an inference image with its vocabulary,
and a training sample with all its views. Runs on the CPU; no weights are needed (random init).

    tools/analyze_model.py --config-file configs/vilseg_vitb16.yaml --output analysis.json
    tools/analyze_model.py --config-file configs/vilseg_tiny.yaml --tasks parameter flop \\
        MODEL.VILSEG.NUM_CLUSTERS 20

Tasks (``--tasks``, default all):

* ``parameter``: per top-level module, trainable and frozen (fvcore ``parameter_count``).
* ``flop``: fvcore FLOPs (one multiply-add = one flop) of one inference image at
  ``INPUT.MIN_SIZE_TEST`` (the whole path, the vocabulary's text encoding apart) and of one
  training sample (global view, g(x), the local crops, one caption, heads and criterion;
  backward = 2 x forward), and of open_clip CLIP's training sample with the same towers.
* ``activation``: fvcore activation counts of the same two inputs.
* ``memory``: bytes of the tensors a training forward keeps for backward (fp32 and half
  precision, with and without ``MODEL.CLIP_VIT.GRAD_CHECKPOINTING``), per sample (batch 2 -
  batch 1) and fixed, and the training state (weights, gradients, AdamW, DDP buckets).

With ``memory`` (and ``flop``), a plan: images per GPU that fit at each card size, and the
TFLOPs of one step at the config's batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Callable, Dict, Optional, Sequence

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from fvcore.nn import parameter_count  # noqa: E402

import vilseg_d2  # noqa: E402,F401  (fills the registries)
from vilseg_d2.analysis import (  # noqa: E402
    Margins,
    activation_counts,
    activation_memory,
    clip_training_flops,
    format_plan,
    inference_flops,
    plan_run,
    state_bytes,
    training_flops,
)
from vilseg_d2.analysis.memory import ATTENTION_KERNELS  # noqa: E402
from vilseg_d2.analysis.planning import DEFAULT_GPU_GIB, GIB  # noqa: E402
from vilseg_d2.config import get_vilseg_cfg  # noqa: E402
from vilseg_d2.errors import run_tool  # noqa: E402

logger = logging.getLogger("vilseg_d2.analyze_model")

TASKS = ("parameter", "flop", "activation", "memory")
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
MIB = 1024**2


def setup(args):
    """The config, on the CPU, with attention through PyTorch's scaled_dot_product_attention
    (``--attention`` picks its kernel) as a GPU runs it, not the CPU's batched matmuls that
    ``MODEL.OPEN_CLIP.ATTENTION "auto"`` would use here."""
    gpu_like = ["MODEL.OPEN_CLIP.ATTENTION", "sdpa", "MODEL.DEVICE", "cpu"]
    return get_vilseg_cfg(args.config_file, list(args.opts) + gpu_like)


def do_parameter(model, cfg, args) -> Dict:
    """Parameters per top-level module (and the model's own, e.g. ``logit_scale``)."""
    counts = parameter_count(model)
    trainable: Dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = name.split(".", 1)[0]
            trainable[top] = trainable.get(top, 0) + p.numel()
    tops = sorted(
        {name.split(".", 1)[0] for name, _ in model.named_parameters()}, key=lambda n: -counts[n]
    )
    by_module = {}
    for n in tops:
        trained = trainable.get(n, 0)
        by_module[n] = {
            "parameters": counts[n],
            "trainable": trained,
            "frozen": counts[n] - trained,
        }
    total_trainable = sum(trainable.values())
    return {
        "total": counts[""],
        "trainable": total_trainable,
        "frozen": counts[""] - total_trainable,
        "by_module": by_module,
    }


def do_flop(model, cfg, args) -> Dict:
    """Inference image, training sample, and open_clip CLIP's training sample."""
    out = {"inference": inference_flops(model, cfg), "training": training_flops(model, cfg)}
    out["clip_training"] = clip_training_flops(cfg)
    out["training_over_clip"] = out["training"]["forward"] / out["clip_training"]["forward"]
    return out


def do_activation(model, cfg, args) -> Dict:
    """fvcore activation counts of the inference image and of the training sample."""
    return activation_counts(model, cfg)


def do_memory(model, cfg, args) -> Dict:
    """Saved activations in fp32 and half precision, with and without checkpointing."""
    half = HALF_DTYPES[args.half_dtype]
    out: Dict = {
        "attention": args.attention,
        "half_measured_as": str(half).replace("torch.", ""),
        "state_bytes": state_bytes(model),
    }
    for key, dtype in (("fp32", None), ("fp16", half)):
        out[key] = {}
        for ckpt in (False, True):
            start = time.perf_counter()
            m = activation_memory(
                model, cfg, dtype=dtype, checkpointing=ckpt, attention=args.attention
            )
            out[key]["checkpointing" if ckpt else "no_checkpointing"] = m
            logger.info(
                f"memory {key} checkpointing={ckpt}: {m['per_sample'] / MIB:.1f} MiB/sample, "
                f"fixed {m['fixed'] / MIB:.1f} MiB ({time.perf_counter() - start:.1f} s)"
            )
        out[key]["checkpointing_saves"] = (
            out[key]["no_checkpointing"]["per_sample"] - out[key]["checkpointing"]["per_sample"]
        )
    return out


# --------------------------------------------------------------------------- report


def _g(n: float) -> str:
    return f"{n / 1e9:.2f}"


def format_parameters(res: Dict) -> str:
    lines = ["| module | parameters | trainable | frozen |", "| --- | --- | --- | --- |"]
    for name, c in res["by_module"].items():
        lines.append(f"| {name} | {c['parameters']:,} | {c['trainable']:,} | {c['frozen']:,} |")
    lines.append(f"| **total** | {res['total']:,} | {res['trainable']:,} | {res['frozen']:,} |")
    return "\n".join(lines)


def format_flops(res: Dict) -> str:
    inf, tr, clip = res["inference"], res["training"], res["clip_training"]
    size = "x".join(map(str, inf["image_size"]))
    pv = tr["per_view"]
    vocabulary = _g(inf["by_module"].get("text_encoder", 0))
    views = (
        f"image tower per view: {_g(pv['global'])} at {pv['global_size']}px, "
        f"{_g(pv['local'])} at {pv['local_size']}px; text tower "
        f"{_g(tr['by_module'].get('text_encoder', 0))}"
    )
    rows = [
        ("input", "GFLOPs", "of which"),
        ("---", "---", "---"),
        (
            f"inference image {size}",
            _g(inf["per_image"]),
            f"image tower {_g(inf['backbone'])}; "
            f"vocabulary of {inf['vocabulary_size']} encoded once: {vocabulary}",
        ),
        ("training sample, forward", _g(tr["forward"]), views),
        (
            "training sample, forward + backward",
            _g(tr["forward_backward"]),
            f"with checkpointing {_g(tr['forward_backward_checkpointed'])}",
        ),
        (
            "open_clip CLIP training sample, forward + backward",
            _g(clip["forward_backward"]),
            f"image {clip['image_size'][0]}px + one caption",
        ),
    ]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        f"ViL-Seg / CLIP training FLOPs per sample: {res['training_over_clip']:.2f}x. fvcore's "
        "convention: one multiply-add = one flop; elementwise ops not counted; "
        "backward = 2 x forward.",
    ]
    return "\n".join(lines)


def format_activations(res: Dict) -> str:
    inference, training = res["inference"]["total"], res["training_sample"]["total"]
    return (
        f"Activations (fvcore, millions of elements): inference image {inference / 1e6:.1f}, "
        f"training sample {training / 1e6:.1f}"
    )


def format_memory(res: Dict) -> str:
    lines = [
        f"| saved for backward ({res['attention']} attention) | per sample MiB | fixed MiB |",
        "| --- | --- | --- |",
    ]
    for key in ("fp32", "fp16"):
        label = key if key == "fp32" else f"fp16 autocast (measured as {res['half_measured_as']})"
        for ckpt in ("no_checkpointing", "checkpointing"):
            m = res[key][ckpt]
            per_sample, fixed = m["per_sample"] / MIB, m["fixed"] / MIB
            lines.append(f"| {label}, {ckpt.replace('_', ' ')} | {per_sample:.1f} | {fixed:.1f} |")
    s = {k: v / GIB for k, v in res["state_bytes"].items()}
    lines.append(
        f"\nWeights {s['weights']:.3f} GiB, gradients {s['gradients']:.3f} GiB, "
        f"AdamW {s['adamw']:.3f} GiB, DDP buckets {s['ddp_buckets']:.3f} GiB (fp32)."
    )
    return "\n".join(lines)


TASK_FUNCTIONS: Dict[str, Callable] = {
    "parameter": do_parameter,
    "flop": do_flop,
    "activation": do_activation,
    "memory": do_memory,
}
FORMATTERS: Dict[str, Callable[[Dict], str]] = {
    "parameter": format_parameters,
    "flop": format_flops,
    "activation": format_activations,
    "memory": format_memory,
}


def make_plan(model, cfg, results: Dict, args) -> Dict:
    """Images per GPU from the half-precision memory (and the step's TFLOPs from the flops)."""
    return plan_run(
        results["memory"]["state_bytes"],
        {k: results["memory"]["fp16"][k] for k in ("no_checkpointing", "checkpointing")},
        batch=int(cfg.SOLVER.IMS_PER_BATCH),
        num_gpus=args.num_gpus,
        num_blocks=len(model.backbone.visual.transformer.resblocks),
        flops=results.get("flop", {}).get("training"),
        gpu_gib=args.gpu_memory,
        margins=Margins(fraction=args.margin, reserve_gib=args.reserve_gib),
    )


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Parameters, FLOPs, activations and training memory of a ViL-Seg config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  tools/analyze_model.py --config-file configs/vilseg_vitb16.yaml "
        "--output analysis.json",
    )
    p.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--output", help="JSON file for every figure")
    p.add_argument("--num-gpus", type=int, default=8, help="GPUs the batch is spread over (plan)")
    p.add_argument(
        "--gpu-memory",
        type=float,
        nargs="+",
        default=list(DEFAULT_GPU_GIB),
        metavar="GIB",
        help="card sizes of the plan, GiB",
    )
    p.add_argument(
        "--margin", type=float, default=Margins.fraction, help="share of a card kept free"
    )
    p.add_argument(
        "--reserve-gib",
        type=float,
        default=Margins.reserve_gib,
        help="GiB kept for the CUDA context, workspaces and NCCL",
    )
    p.add_argument(
        "--half-dtype",
        choices=sorted(HALF_DTYPES),
        default="bf16",
        help="autocast dtype measured for fp16 training: bf16 saves the same 2-byte tensors on "
        "the CPU (one autocast op list for both) and runs fast on CPUs without fp16 units",
    )
    p.add_argument(
        "--attention",
        choices=ATTENTION_KERNELS,
        default="default",
        help="attention kernel of the memory task: PyTorch's default (fused, as on GPUs) or math",
    )
    p.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="config overrides, KEY VALUE")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = get_parser().parse_args(argv)
    setup_logger(name="vilseg_d2")
    start = time.perf_counter()
    cfg = setup(args)
    model = build_model(cfg)
    results: Dict = {
        "config_file": args.config_file,
        "model": cfg.MODEL.OPEN_CLIP.MODEL_NAME,
        "settings": {
            "argv": sys.argv[1:] if argv is None else list(argv),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "seconds": {"build": time.perf_counter() - start},
    }
    for task in args.tasks:
        t = time.perf_counter()
        results[task] = TASK_FUNCTIONS[task](model, cfg, args)
        results["seconds"][task] = time.perf_counter() - t
        logger.info(f"{task}: {results['seconds'][task]:.1f} s")
        print(f"\n## {task}\n\n{FORMATTERS[task](results[task])}")
    if "memory" in results:
        results["plan"] = make_plan(model, cfg, results, args)
        print(f"\n## plan\n\n{format_plan(results['plan'])}")
    results["seconds"]["total"] = time.perf_counter() - start
    print(
        f"\nTotal {results['seconds']['total']:.0f} s on {torch.get_num_threads()} torch threads."
    )
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    run_tool(main)
