"""A training step with autocast on CPU or CUDA (Detectron2's AMPTrainer is CUDA-only)."""

from __future__ import annotations

import contextlib
import logging
import math
import time

import torch
from detectron2.engine import SimpleTrainer
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["AutocastTrainer", "check_losses_finite", "compile_transformers", "cpu_has_native"]

logger = logging.getLogger(__name__)


def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU computes ``dtype`` (bf16 / fp16) in hardware, as oneDNN reports it.

    Without (e.g. an AVX2-only CPU), autocast in that dtype is emulated and far slower than fp32:
    a training step of configs/vilseg_tiny.yaml took 48 s in bf16 against 3.9 s in fp32 on such
    a machine (docs/benchmarks.md).
    """
    check = {
        torch.bfloat16: "_is_mkldnn_bf16_supported",
        torch.float16: "_is_mkldnn_fp16_supported",
    }.get(dtype)
    if check is None:
        return dtype == torch.float32
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # a build without oneDNN: nothing is native
        return False


def compile_transformers(model: torch.nn.Module) -> int:
    """``torch.compile`` every open_clip ``Transformer`` (the image and text towers' blocks, and
    the momentum teacher's) in place (``nn.Module.compile``: parameter names and checkpoints are
    unchanged). Returns how many were compiled (``SOLVER.COMPILE``)."""
    from open_clip.transformer import Transformer

    towers = [m for m in model.modules() if isinstance(m, Transformer)]
    for m in towers:
        m.compile()
    return len(towers)


def check_losses_finite(loss_dict: dict, iteration: int) -> None:
    """Stop training at the first NaN/inf loss, naming it (not silent divergence)."""
    for name, value in loss_dict.items():
        v = float(value.detach())
        if not math.isfinite(v):
            raise FloatingPointError(
                f"{name} became {v} at iteration {iteration} (all losses: "
                f"{ {k: float(x.detach()) for k, x in loss_dict.items()} }). "
                f"Lower SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS, or check the data."
            )


class AutocastTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` whose forward runs under ``torch.autocast``.

    bf16 and fp16 work on CPU and CUDA; fp16 adds a ``GradScaler`` of the model's device type
    (its state goes into the trainer's checkpoint). With ``dtype=None`` it is a plain fp32
    step. Every loss is checked for NaN/inf before the backward pass.

    On CPU, attention runs on PyTorch's "math" backend: with the short token sequences of small
    configs its backward pass is far cheaper than the fused CPU kernel's (a training step of
    configs/vilseg_tiny.yaml: about 20% less time; `tools/benchmark.py` measures it).
    """

    def __init__(
        self, model, data_loader, optimizer, *, dtype: torch.dtype | None = None, **kwargs
    ):
        """
        Args:
            model, data_loader, optimizer, kwargs: as :class:`SimpleTrainer`.
            dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``), or None for fp32.
        """
        super().__init__(model, data_loader, optimizer, **kwargs)
        param = next(model.parameters())
        self.device_type = param.device.type
        self.dtype = dtype
        if self.device_type == "cpu" and dtype is not None and not cpu_has_native(dtype):
            logger.warning(
                f"Autocast in {dtype} on a CPU without native {dtype} "
                f"({torch.backends.cpu.get_cpu_capability()}): it is emulated, and a step can "
                "take 10x the time of fp32. SOLVER.AMP.ENABLED False trains in fp32."
            )
        self.grad_scaler = (
            torch.amp.GradScaler(self.device_type) if dtype == torch.float16 else None
        )

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        attention = (
            sdpa_kernel([SDPBackend.MATH])
            if self.device_type == "cpu"
            else contextlib.nullcontext()
        )
        with attention:
            with torch.autocast(
                self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
            ):
                loss_dict = self.model(data)
            check_losses_finite(loss_dict, self.iter)
            losses = sum(loss_dict.values())

            self.optimizer.zero_grad()
            if self.grad_scaler is not None:
                self.grad_scaler.scale(losses).backward()
            else:
                losses.backward()
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
