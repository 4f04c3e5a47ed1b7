"""ViL-Seg's three objectives as pure functions (DESIGN section 4).

Each is computed in fp32 whatever autocast is in force: its inputs are upcast (fp64 stays) and
autocast is off inside, so fp16 / bf16 training changes only the encoders, never a loss's sums
(an fp16 J over 200,000 pixels overflows; under bf16 it is 8% off).
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F

__all__ = [
    "cross_modal_contrastive_loss",
    "self_distillation_loss",
    "mutual_information_loss",
    "joint_distribution",
    "mutual_information",
    "self_distillation_stats",
]

Fn = TypeVar("Fn", bound=Callable)


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 autocast outputs go up; fp64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _without_autocast(fn: Fn) -> Fn:
    """Run ``fn`` with autocast off on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@_without_autocast
def cross_modal_contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (paper eq. 3-4), image i and text i being the positive pair.

    In distributed training pass the features gathered from all processes (with gradients), so
    that every image sees the global batch's captions as negatives.

    Args:
        image_emb: B x D image embeddings (any norm; L2-normalised here).
        text_emb: B x D text embeddings.
        logit_scale: the already-exponentiated scalar 1/tau.

    Returns:
        scalar: mean of CE(image -> text) and CE(text -> image).
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} differ."
        )
    img = F.normalize(_fp32(image_emb), dim=-1)
    txt = F.normalize(_fp32(text_emb), dim=-1)
    scale = _fp32(logit_scale) if isinstance(logit_scale, torch.Tensor) else logit_scale
    logits = scale * img @ txt.t()  # B x B
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


@_without_autocast
def self_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """Cross-entropy between the global view's and the local views' projected distributions (eq. 2).

    Args:
        student_logits: V x B x P, Phi_a of the V local views.
        teacher_logits: B x P, Phi_a of the global view; no gradient flows into it.
        center: P (or 1 x P), DINO's running center of the teacher logits.
        student_temp: temperature of the student softmax (0.1).
        teacher_temp: temperature of the centred teacher softmax (0.04 -> 0.07).

    Returns:
        scalar: mean over views and batch of sum_p -softmax((t - c)/T_t)_p log_softmax(s/T_s)_p.
    """
    if student_logits.dim() != 3 or student_logits.shape[1:] != teacher_logits.shape:
        raise ValueError(
            "student_logits must be V x B x P and teacher_logits B x P; "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    # B x P
    teacher = F.softmax((_fp32(teacher_logits.detach()) - _fp32(center)) / teacher_temp, dim=-1)
    log_student = F.log_softmax(_fp32(student_logits) / student_temp, dim=-1)  # V x B x P
    return -(teacher.unsqueeze(0) * log_student).sum(dim=-1).mean()


@torch.no_grad()
@_without_autocast
def self_distillation_stats(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> dict:
    """What DINO's authors watch for collapse, for the arguments of :func:`self_distillation_loss`.

    Returns:
        floats: ``teacher_entropy`` (mean over the batch of H(teacher), nats; ln P = uniform,
        0 = one-hot), ``kl`` (mean KL(teacher || student) over views and batch; the loss is
        their sum), ``center_norm`` (L2 norm of the center), ``teacher_std`` (std over the
        batch of the teacher logits, averaged over the P dimensions: 0 when every image
        projects alike), ``teacher_top_share`` (share of the batch whose teacher argmax is
        the most common one: 1 = one dimension for everything).
    """
    teacher = _fp32(teacher_logits)
    log_t = F.log_softmax((teacher - _fp32(center)) / teacher_temp, dim=-1)  # B x P
    log_s = F.log_softmax(_fp32(student_logits) / student_temp, dim=-1)  # V x B x P
    t = log_t.exp()
    entropy = -(t * log_t).sum(-1).mean()
    kl = (t.unsqueeze(0) * (log_t.unsqueeze(0) - log_s)).sum(-1).mean()
    top = log_t.argmax(-1)
    return {
        "teacher_entropy": float(entropy),
        "kl": float(kl),
        "center_norm": float(_fp32(center).norm()),
        "teacher_std": float(teacher.std(0).mean()) if len(teacher) > 1 else 0.0,
        "teacher_top_share": float(top.bincount().max()) / len(top),
    }


@_without_autocast
def joint_distribution(p: torch.Tensor, p_tf: torch.Tensor) -> torch.Tensor:
    """The unnormalised joint distribution of the two views' cluster assignments (eq. 7's sum).

    Summing it over several processes (or chunks) before :func:`mutual_information` gives the J
    of all their pixels together.

    Args:
        p: N x C soft cluster assignments (rows sum to 1), or G x N x C (one J per group).
        p_tf: assignments of the same pixels in the transformed view (flip undone), shaped like
            ``p``.

    Returns:
        (G x) C x C: sum_n p_n p_tf_n^T, in fp32.
    """
    if p.shape != p_tf.shape or p.dim() not in (2, 3):
        raise ValueError(
            "p and p_tf must both be N x C or G x N x C; "
            f"got {tuple(p.shape)} and {tuple(p_tf.shape)}."
        )
    return _fp32(p).transpose(-1, -2) @ _fp32(p_tf)


@_without_autocast
def mutual_information(joint: torch.Tensor, eps: float = sys.float_info.epsilon) -> torch.Tensor:
    """-I(J) of an unnormalised joint distribution (eq. 8), as IIC's reference ``IID_loss``.

    Args:
        joint: (G x) C x C, e.g. from :func:`joint_distribution`; symmetrised and normalised here.
        eps: values of J and its marginals below it are clamped to it.

    Returns:
        scalar: -sum_cc' J_cc' (ln J_cc' - ln J_c - ln J_c'), averaged over the G groups.
    """
    joint = _fp32(joint)
    joint = (joint + joint.transpose(-1, -2)) / 2
    joint = joint / joint.sum(dim=(-2, -1), keepdim=True)
    p_i = joint.sum(dim=-1, keepdim=True).clamp(min=eps)  # (G x) C x 1
    p_j = joint.sum(dim=-2, keepdim=True).clamp(min=eps)  # (G x) 1 x C
    joint = joint.clamp(min=eps)
    return -(joint * (joint.log() - p_i.log() - p_j.log())).sum(dim=(-2, -1)).mean()


def mutual_information_loss(
    p: torch.Tensor, p_tf: torch.Tensor, eps: float = sys.float_info.epsilon
) -> torch.Tensor:
    """IIC's invariant-information loss (paper eq. 6-8), equal to IIC's reference ``IID_loss``.

    Args:
        p: N x C soft cluster assignments of N pixels (rows sum to 1): one joint distribution J
            over all of them (the paper's eq. 7, J over the minibatch's B*H*W pixels). Or
            G x N x C: one J per group (e.g. per image), and the mean of the G losses.
        p_tf: assignments of the same pixels in the transformed view (flip already undone), shaped
            like ``p``.
        eps: values of J and its marginals below it are clamped to it.

    Returns:
        scalar: -I(J) = -sum_cc' J_cc' (ln J_cc' - ln J_c - ln J_c'), averaged over the groups.
    """
    return mutual_information(joint_distribution(p, p_tf), eps)
