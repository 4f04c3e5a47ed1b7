"""Training memory measured device-independently: the tensors autograd keeps for backward.

A forward pass keeps, until its backward, the tensors its ops save for the gradients: the
activation memory of training. :class:`SavedTensorMeter` records them through
``torch.autograd.graph.saved_tensors_hooks``, each underlying storage once and at the dtype it
really has, leaving out the model's own parameters and buffers (counted as weights). This
needs no GPU: the same graph saves the same tensors on any device (up to the attention kernel
and the autocast op lists, see :func:`saved_bytes`).
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .samples import training_samples, training_storage

__all__ = [
    "ATTENTION_KERNELS",
    "SavedTensorMeter",
    "grad_checkpointing",
    "saved_bytes",
    "activation_memory",
    "state_bytes",
]

# "default": PyTorch's own choice of scaled_dot_product_attention kernel, a fused one for these
# shapes (flash attention on the CPU, flash / memory-efficient attention on GPUs), which keeps no
# L x L attention matrix; "math": the unfused reference, which keeps it.
ATTENTION_KERNELS = ("default", "math")


class SavedTensorMeter:
    """Records the tensors autograd saves for backward inside the block; on leaving it, counts
    those still held (by a graph that is still alive).

    Each underlying storage counts once (views and tensors saved by several ops share it), with
    its full size in bytes (``untyped_storage().nbytes()``, so at the dtype it really has).
    Tensors saved by graphs dropped within the block (e.g. of values logged and discarded) are
    not counted, and storages of ``exclude`` (the parameters and buffers) are left out.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        """
        Args:
            exclude: tensors whose storages are not counted.
        """
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._saved: List[weakref.ref] = []
        self.storages: Dict[int, Tuple[int, torch.dtype]] = {}  # data_ptr -> (bytes, dtype)
        self._hooks: Optional[torch.autograd.graph.saved_tensors_hooks] = None

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._saved.append(weakref.ref(tensor))
        return tensor  # saved as is: it lives exactly as long as the graph that saved it

    def __enter__(self) -> "SavedTensorMeter":
        self._saved.clear()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self.storages = {}
        for ref in self._saved:
            tensor = ref()
            if tensor is None:  # its graph is gone
                continue
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            if storage.nbytes() and ptr not in self._exclude:
                self.storages.setdefault(ptr, (storage.nbytes(), tensor.dtype))
        self._saved.clear()

    @property
    def total_bytes(self) -> int:
        return sum(n for n, _ in self.storages.values())

    def bytes_by_dtype(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for n, dtype in self.storages.values():
            key = str(dtype).replace("torch.", "")
            out[key] = out.get(key, 0) + n
        return out


@contextlib.contextmanager
def grad_checkpointing(model: nn.Module, enable: bool) -> Iterator[None]:
    """Switch the image tower's gradient checkpointing for the block, then restore it.

    It is what ``MODEL.CLIP_VIT.GRAD_CHECKPOINTING`` sets when the backbone is built: open_clip's
    ``set_grad_checkpointing`` of the visual tower, which recomputes each transformer block in
    backward (the text tower is not checkpointed).
    """
    visual = model.backbone.visual
    old = bool(visual.transformer.grad_checkpointing)
    visual.set_grad_checkpointing(enable)
    try:
        yield
    finally:
        visual.set_grad_checkpointing(old)


def _attention_kernel(kind: str):
    if kind not in ATTENTION_KERNELS:
        raise ValueError(f"attention must be one of {ATTENTION_KERNELS}, got {kind!r}.")
    return sdpa_kernel([SDPBackend.MATH]) if kind == "math" else contextlib.nullcontext()


def saved_bytes(
    model: nn.Module,
    cfg,
    batch: int,
    *,
    dtype: Optional[torch.dtype] = None,
    checkpointing: bool = False,
    attention: str = "default",
) -> Dict:
    """Bytes a training forward of ``batch`` synthetic samples keeps for backward.

    The model runs in training mode, at the iteration where all three objectives are in force,
    under ``torch.autocast`` of its device type with ``dtype`` (None = fp32). No backward is run.

    Args:
        model: a ViLSeg.
        cfg: its config (the views' sizes and count).
        batch: samples in the forward.
        dtype: autocast dtype (``torch.float16`` / ``torch.bfloat16``) or None.
        checkpointing: the image tower's gradient checkpointing.
        attention: one of :data:`ATTENTION_KERNELS`.

    Returns:
        ``{"bytes", "by_dtype", "storages"}``.
    """
    model.train()
    device_type = next(model.parameters()).device.type
    samples = training_samples(cfg, batch)
    autocast = torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)
    meter = SavedTensorMeter(exclude=itertools.chain(model.parameters(), model.buffers()))
    with (
        training_storage(cfg),
        grad_checkpointing(model, checkpointing),
        _attention_kernel(attention),
    ):
        with autocast, meter:  # counted on leaving it, while ``losses`` holds the graph
            losses = model(samples)
    if not losses or not all(v.requires_grad for v in losses.values()):
        raise RuntimeError(f"The training forward gave no differentiable losses: {sorted(losses)}.")
    del losses
    return {
        "bytes": meter.total_bytes,
        "by_dtype": meter.bytes_by_dtype(),
        "storages": len(meter.storages),
    }


def activation_memory(model: nn.Module, cfg, **kwargs) -> Dict:
    """Per-sample and fixed activation bytes, from forwards of batch 1 and batch 2.

    ``per_sample`` = saved(2) - saved(1); ``fixed`` = saved(1) - per_sample: what does not grow
    with the batch (under autocast, mostly the half-precision copies of the weights).

    Args:
        model, cfg: as :func:`saved_bytes`.
        kwargs: ``dtype``, ``checkpointing``, ``attention`` of :func:`saved_bytes`.
    """
    one, two = (saved_bytes(model, cfg, batch, **kwargs) for batch in (1, 2))
    per_sample = two["bytes"] - one["bytes"]
    return {
        "per_sample": per_sample,
        "fixed": one["bytes"] - per_sample,
        "batch1": one,
        "batch2": two,
    }


def state_bytes(model: nn.Module) -> Dict[str, int]:
    """Bytes of the training state besides activations, as the parameters are stored (fp32).

    ``weights``: every parameter; ``gradients``: one per trainable parameter; ``adamw``: AdamW's
    two moments per trainable parameter; ``ddp_buckets``: DistributedDataParallel's gradient
    buckets, another copy of the gradients (multi-GPU runs, ``gradient_as_bucket_view=False``,
    PyTorch's default and the trainer's).
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {
        "weights": weights,
        "gradients": trainable,
        "adamw": 2 * trainable,
        "ddp_buckets": trainable,
    }
