"""Model analysis: parameters, FLOPs, activations, training memory, and GPU run planning.

Used by ``tools/analyze_model.py`` and :mod:`vilseg_d2.benchmark` (``tools/benchmark.py``); not
imported by ``vilseg_d2``.
"""

from .clip_reference import ClipTrainingModel, clip_samples
from .flops import (
    activation_counts,
    clip_training_flops,
    inference_flops,
    training_flop_ratio,
    training_flops,
)
from .memory import (
    SavedTensorMeter,
    activation_memory,
    grad_checkpointing,
    saved_bytes,
    state_bytes,
)
from .planning import Margins, format_plan, plan_run
from .samples import inference_inputs, training_iteration, training_samples, training_storage

__all__ = [
    "ClipTrainingModel",
    "Margins",
    "SavedTensorMeter",
    "activation_counts",
    "activation_memory",
    "clip_samples",
    "clip_training_flops",
    "format_plan",
    "grad_checkpointing",
    "inference_flops",
    "inference_inputs",
    "plan_run",
    "saved_bytes",
    "state_bytes",
    "training_flop_ratio",
    "training_flops",
    "training_iteration",
    "training_samples",
    "training_storage",
]
