"""Self-attention of open_clip's towers with the kernel chosen per device and sequence length.

open_clip's blocks call ``nn.MultiheadAttention`` (batch first), which on the CPU either runs
PyTorch's fused flash kernel, built for long sequences, or its "math" reference path, which
transposes the batch to sequence-first and back. With the short sequences ViL-Seg trains on (65
image tokens and the captions' length in the tiny config; 197 and 37 in ViT-B/16's views) the
plain ``softmax(q k^T / sqrt(d) + mask) v`` with batched matmuls is several times faster, forward
and backward (``tools/benchmark.py`` measures it; ``docs/benchmarks.md``). The module here keeps
``nn.MultiheadAttention``'s parameters and state-dict keys, so checkpoints are unchanged either
way.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ATTENTION_KERNELS", "ViLSegSelfAttention", "set_attention_kernel"]

# "auto": "math" on the CPU up to MAX_MATH_TOKENS tokens, "sdpa" otherwise (on CUDA PyTorch's
# dispatcher picks flash / memory-efficient attention); "math": batched matmuls everywhere;
# "sdpa": F.scaled_dot_product_attention everywhere; "native": open_clip's nn.MultiheadAttention
# as it is (the sequence-first path).
ATTENTION_KERNELS = ("auto", "math", "sdpa", "native")


class ViLSegSelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose batch-first self-attention runs the kernel of
    :attr:`kernel`. Anything else (cross-attention, attention weights asked for, a key padding
    mask, dropout while training, separate q/k/v projections) falls back to
    ``nn.MultiheadAttention.forward``. Made from an existing module by
    :func:`set_attention_kernel`."""

    kernel: str = "auto"
    # Above this many tokens "auto" leaves the CPU to the fused kernel, whose memory does not grow
    # with the square of the sequence (a 896 x 896 ViT-B/16 image has 3,137 tokens); up to it the
    # matmuls were as fast or faster (785 tokens: 318 ms against 325 ms, forward + backward).
    MAX_MATH_TOKENS: int = 1024

    def _fast_path(self, query, key, value, key_padding_mask, need_weights) -> bool:
        return (
            self.kernel != "native"
            and self.batch_first
            and query is key
            and key is value
            and query.dim() == 3
            and key_padding_mask is None
            and not need_weights
            and self._qkv_same_embed_dim
            and self.bias_k is None
            and not (self.training and self.dropout > 0)
        )

    def use_math(self, x: torch.Tensor) -> bool:
        """Whether ``x`` (B x N x C) runs on the batched-matmul kernel."""
        if self.kernel == "auto":
            return x.device.type == "cpu" and x.shape[1] <= self.MAX_MATH_TOKENS
        return self.kernel == "math"

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """As ``nn.MultiheadAttention.forward``; the fast path returns ``(B x N x C, None)``."""
        if not self._fast_path(query, key, value, key_padding_mask, need_weights):
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        return self.out_proj(self.attend(query, attn_mask)), None

    def attend(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The heads' outputs before the output projection.

        Args:
            x: B x N x C tokens.
            attn_mask: None, or N x N added to the logits (float, -inf = masked) or boolean
                (True = masked), as ``nn.MultiheadAttention`` takes it.

        Returns:
            B x N x C.
        """
        B, N, C = x.shape
        heads = self.num_heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # B x N x 3C
        q, k, v = qkv.view(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(
                attn_mask, float("-inf")
            )
        elif attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        if self.use_math(x):
            logits = (q * (C // heads) ** -0.5) @ k.transpose(-2, -1)  # B x heads x N x N
            if attn_mask is not None:
                logits = logits + attn_mask
            out = logits.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return out.transpose(1, 2).reshape(B, N, C)


def set_attention_kernel(module: nn.Module, kernel: str) -> int:
    """Make every batch-first ``nn.MultiheadAttention`` inside ``module`` a
    :class:`ViLSegSelfAttention` running ``kernel`` (in place: parameters, their identity and the
    state dict are kept).

    Args:
        module: e.g. an open_clip tower.
        kernel: one of :data:`ATTENTION_KERNELS`.

    Returns:
        how many attention modules were set.
    """
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(
            f"MODEL.OPEN_CLIP.ATTENTION must be one of {list(ATTENTION_KERNELS)}, got {kernel!r}."
        )
    count = 0
    for m in module.modules():
        if isinstance(m, nn.MultiheadAttention) and m.batch_first:
            m.__class__ = ViLSegSelfAttention
            m.kernel = kernel
            count += 1
    return count
