"""FLOPs and activations of ViL-Seg and of open_clip's CLIP, counted by fvcore's jit tracing.

As Detectron2's ``tools/analyze_model.py``: one fused multiply-add is one flop, and
elementwise ops, norms' reductions, softmax and the like are not counted (Detectron2's
``_IGNORED_OPS`` and fvcore's unsupported ops, listed in each result). Attention, which fvcore
does not know, is counted here: the two batched products of ``scaled_dot_product_attention``
and, for PyTorch's fused inference path of ``nn.MultiheadAttention``, its projections too.
Training FLOPs are forward + 2 x the forward of what trains (backward = 2 x forward, the usual
convention; a momentum teacher or a frozen tower runs forward only); gradient
checkpointing adds one more forward of the checkpointed transformer blocks.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from detectron2.export import TracingAdapter
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import ActivationCountAnalysis
from fvcore.nn.jit_analysis import JitModelAnalysis
from fvcore.nn.jit_handles import generic_activation_jit, get_shape
from torch import nn

from .clip_reference import ClipTrainingModel, clip_samples
from .memory import grad_checkpointing
from .samples import (
    DEFAULT_VOCABULARY,
    inference_inputs,
    random_image,
    training_samples,
    training_storage,
)

__all__ = [
    "BACKWARD_FACTOR",
    "analyze",
    "summarize",
    "inference_flops",
    "training_flops",
    "clip_training_flops",
    "training_flop_ratio",
    "activation_counts",
]

# Training = forward + backward, backward = 2 x forward (one product for the input's gradient,
# one for the weight's).
BACKWARD_FACTOR = 2.0


def _attention_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::scaled_dot_product_attention(q, k, v, ...)``: q ... x L x E, k ... x S x E,
    v ... x S x Ev: softmax(q k^T) v costs L*S*E + L*S*Ev multiply-adds per leading index."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _native_mha_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::_native_multi_head_attention(query, key, value, embed_dim, ...)``, batch-first
    B x L x E (query) and B x S x E (key, value): q/k/v projections, attention and output
    projection."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    batch, length, dim = q
    source = k[-2]
    projections = batch * (2 * length + 2 * source) * dim * dim
    return projections + 2 * batch * length * source * dim


def _native_mha_activations(inputs: List[Any], outputs: List[Any]) -> int:
    """The outputs of the fused path's linear layers and attention: B x L x (3E + E + E)."""
    return 5 * math.prod(get_shape(inputs[0]))


def _matmul_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """aten::matmul of any ranks (fvcore's handle takes matrices only; the background rule's
    region-by-image similarity is a matrix times a vector): the output's elements times the
    contracted size."""
    return math.prod(get_shape(outputs[0])) * get_shape(inputs[0])[-1]


FLOP_HANDLES = {
    "aten::matmul": _matmul_flops,
    "aten::scaled_dot_product_attention": _attention_flops,
    "aten::_native_multi_head_attention": _native_mha_flops,
}
ACTIVATION_HANDLES = {
    "aten::scaled_dot_product_attention": generic_activation_jit(),
    "aten::_native_multi_head_attention": _native_mha_activations,
}


def analyze(model: nn.Module, inputs: Any, kind: str = "flop") -> JitModelAnalysis:
    """An fvcore analysis of ``model(inputs)`` (traced lazily, on the first query).

    Args:
        model: any module; Detectron2's ``TracingAdapter`` flattens list/dict inputs and outputs.
        inputs: the argument (e.g. a list of dicts) or a tuple of arguments.
        kind: "flop" or "activation".
    """
    if kind == "flop":  # Detectron2's: TracingAdapter, and its elementwise ops left out
        analysis = FlopCountAnalysis(model, inputs).set_op_handle(**FLOP_HANDLES)
    elif kind == "activation":
        wrapper = TracingAdapter(model, inputs, allow_non_tensor=True)
        analysis = ActivationCountAnalysis(wrapper, wrapper.flattened_inputs).set_op_handle(
            **ACTIVATION_HANDLES
        )
    else:
        raise ValueError(f"kind must be 'flop' or 'activation', got {kind!r}.")
    return (
        analysis.unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )


def summarize(analysis: JitModelAnalysis, extra_modules: tuple = ()) -> Dict:
    """Total, per top-level module (plus ``extra_modules``, dotted names), per operator, and
    the ops that were seen but not counted."""
    by_module = {
        name.split(".", 1)[1]: n for name, n in analysis.by_module().items() if "." in name
    }
    wanted = [m for m in by_module if "." not in m] + [m for m in extra_modules if m in by_module]
    return {
        "total": int(analysis.total()),
        "by_module": {m: int(by_module[m]) for m in wanted},
        "by_operator": {op: int(n) for op, n in analysis.by_operator().items()},
        "uncounted_ops": dict(sorted(analysis.unsupported_ops().items())),
    }


def inference_flops(model: nn.Module, cfg, vocabulary=DEFAULT_VOCABULARY, size: int = 0) -> Dict:
    """FLOPs of the whole inference path on one square image (eval mode).

    Args:
        model: a ViLSeg.
        cfg: its config (``INPUT.MIN_SIZE_TEST`` is the default side).
        vocabulary: class names; their text encoding is counted as ``text_encoder``.
        size: image side (0 = ``INPUT.MIN_SIZE_TEST``).

    Returns:
        :func:`summarize`'s dict plus ``image_size``, ``per_image`` (total without the
        vocabulary's text encoding, which the model caches per vocabulary) and ``backbone``
        (the image tower alone, ``forward_tokens``, on the normalised image; the image's side
        must be a multiple of the patch size).
    """
    model.eval()
    model.text_encoder.clear_cache()  # so that the trace includes the vocabulary's encoding
    inputs = inference_inputs(cfg, vocabulary, size)
    side = inputs[0]["image"].shape[-1]
    with torch.no_grad():
        out = summarize(analyze(model, inputs, "flop"))
        backbone = _backbone_flops(model, side)
    model.text_encoder.clear_cache()
    out.update(
        image_size=[side, side],
        vocabulary_size=len(vocabulary),
        per_image=out["total"] - out["by_module"].get("text_encoder", 0),
        backbone=backbone,
        counted="model([{image, vocabulary}]) in eval mode: the whole inference path (mode "
        f"{model.inference_mode!r}); per_image leaves out the text tower's encoding of the "
        "vocabulary.",
    )
    return out


def _backbone_flops(model: nn.Module, side: int) -> int:
    """FLOPs of the image tower (``forward_tokens``, in the model's current mode) on one
    normalised side x side image. (In a whole-model trace, the ops that ``forward_tokens`` runs
    outside the tower's submodules, e.g. the final projection, count towards the model.)"""
    x = ((random_image(side, side).float() - model.pixel_mean) / model.pixel_std)[None]
    return int(analyze(_Tokens(model.backbone), (x,), "flop").total())


class _Tokens(nn.Module):
    """``backbone.forward_tokens`` as a module call (what ViL-Seg's training runs)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.backbone.forward_tokens(x)


def _frozen_children(model: nn.Module) -> List[str]:
    """Top-level modules with parameters, none trainable (a momentum teacher, a frozen tower):
    their forward needs no backward."""
    return [
        name
        for name, child in model.named_children()
        if any(True for _ in child.parameters())
        and not any(p.requires_grad for p in child.parameters())
    ]


def training_flops(model: nn.Module, cfg) -> Dict:
    """FLOPs of one training sample with all its views, all three objectives in force.

    Counted: the whole training forward, ``model([sample])`` in training mode (image tower on
    the global view, g(x) and the local crops, the text tower on the caption, both heads and
    the criterion, a momentum teacher if the config has one), traced at the iteration where
    every objective is at full weight; the backward is 2 x the forward of every module that
    trains. Also the image tower alone per view size (``per_view``), and forward + backward
    with gradient checkpointing (one more forward of the image tower's blocks).

    Returns:
        :func:`summarize`'s dict (of the forward) plus ``forward``, ``forward_backward``,
        ``checkpoint_recompute``, ``forward_backward_checkpointed``, ``per_view``, ``views``
        and ``forward_only_modules``.
    """
    v, w = cfg.INPUT.VILSEG, cfg.MODEL.VILSEG
    views = {
        "global": 1,
        "transformed": int(w.CLUSTER_WEIGHT > 0),
        "local": int(v.NUM_LOCAL_CROPS) if w.VISION_WEIGHT > 0 else 0,
        "captions": int(w.CROSS_WEIGHT > 0),
    }
    model.train()
    with training_storage(cfg), grad_checkpointing(model, False):
        out = summarize(
            analyze(model, [training_samples(cfg, 1)[0]], "flop"), ("backbone.visual.transformer",)
        )
        per_view = {
            "global": _backbone_flops(model, v.GLOBAL_SIZE),
            "local": _backbone_flops(model, v.LOCAL_SIZE),
        }
    forward = out["total"]
    forward_only = _frozen_children(model)
    trained = forward - sum(out["by_module"].get(name, 0) for name in forward_only)
    forward_backward = int(forward + BACKWARD_FACTOR * trained)
    recompute = (
        0 if "backbone" in forward_only else out["by_module"].get("backbone.visual.transformer", 0)
    )
    out.update(
        forward=forward,
        forward_backward=forward_backward,
        checkpoint_recompute=recompute,
        forward_backward_checkpointed=forward_backward + recompute,
        forward_only_modules=forward_only,
        per_view=dict(per_view, global_size=int(v.GLOBAL_SIZE), local_size=int(v.LOCAL_SIZE)),
        views=views,
        counted=f"model([sample]) in training mode, objectives in force: image tower on "
        f"{views['global']} global + {views['transformed']} transformed ({v.GLOBAL_SIZE}px) + "
        f"{views['local']} local ({v.LOCAL_SIZE}px) views, text tower on {views['captions']} "
        "caption, heads, criterion; backward = 2 x forward of what trains.",
    )
    return out


def clip_training_flops(cfg, clip: Optional[ClipTrainingModel] = None) -> Dict:
    """FLOPs of one training sample of open_clip's CLIP with the same towers: the image tower
    on one image at its own size, the text tower on one caption, ``ClipLoss``.

    Args:
        cfg: the ViL-Seg config (``MODEL.OPEN_CLIP.MODEL_NAME``, pixel normalisation).
        clip: an already built :class:`ClipTrainingModel` (default: build one).
    """
    clip = (clip or ClipTrainingModel.from_config(cfg)).train()
    out = summarize(
        analyze(clip, clip_samples(1, clip.image_size), "flop"), ("clip.visual", "clip.transformer")
    )
    forward = out["total"]
    out.update(
        forward=forward,
        forward_backward=int(forward * (1 + BACKWARD_FACTOR)),
        image_size=[clip.image_size, clip.image_size],
        counted="open_clip CLIP(image, text) + ClipLoss on one image and one caption; "
        "backward = 2 x forward.",
    )
    return out


def training_flop_ratio(model: nn.Module, cfg, clip: Optional[ClipTrainingModel] = None) -> Dict:
    """ViL-Seg's training-sample FLOPs over open_clip CLIP's (same towers, same convention).

    Returns:
        ``vilseg_forward``, ``clip_forward`` (per sample), ``ratio`` (forward + backward alike).
    """
    vilseg = training_flops(model, cfg)["forward"]
    clip_forward = clip_training_flops(cfg, clip)["forward"]
    return {"vilseg_forward": vilseg, "clip_forward": clip_forward, "ratio": vilseg / clip_forward}


def activation_counts(model: nn.Module, cfg) -> Dict:
    """fvcore's activation counts (outputs of convolutions, linear layers, matrix products and
    attention, in elements) of one inference image and of one training sample."""
    model.eval()
    model.text_encoder.clear_cache()
    with torch.no_grad():
        inference = summarize(analyze(model, inference_inputs(cfg), "activation"))
    model.text_encoder.clear_cache()
    model.train()
    with training_storage(cfg), grad_checkpointing(model, False):
        training = summarize(analyze(model, [training_samples(cfg, 1)[0]], "activation"))
    return {"inference": inference, "training_sample": training}
