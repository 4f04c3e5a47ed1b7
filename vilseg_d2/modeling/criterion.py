"""``ViLSegCriterion``: the three objectives with their state, weights and cross-process sums."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from detectron2.config import configurable
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from open_clip.loss import gather_features
from torch import nn

from .losses import (
    cross_modal_contrastive_loss,
    joint_distribution,
    mutual_information,
    self_distillation_loss,
    self_distillation_stats,
)

__all__ = ["ViLSegCriterion", "gather_embeddings", "current_storage", "CLUSTER_JOINTS"]

CLUSTER_JOINTS = ("global", "batch", "image")


def gather_embeddings(
    image_emb: torch.Tensor, text_emb: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """All processes' embeddings, with gradients (the global batch's negatives), as open_clip.

    Args:
        image_emb, text_emb: B x D, this process's.

    Returns:
        (world*B x D, world*B x D); each process's backward then gets world_size x its rows'
        gradient, which DDP's averaging turns into the gradient of the global loss.
    """
    world = comm.get_world_size()
    if world == 1:
        return image_emb, text_emb
    return gather_features(
        image_emb,
        text_emb,
        local_loss=False,
        gather_with_grad=True,
        rank=comm.get_rank(),
        world_size=world,
    )


class ViLSegCriterion(nn.Module):
    """ViL-Seg's objectives (paper eq. 1):
    ``L = w_vision L_vision + w_cross L_cross + w_cluster L_cluster``.

    It owns what the objectives need besides the model's outputs, as Mask2Former's
    ``SetCriterion`` does: the loss weights (``weight_dict``), DINO's teacher center and
    teacher-temperature schedule (L_vision), the warm-up of the auxiliary objectives, and the
    sums across processes: L_cross's negatives, the center's batch mean and, with
    ``cluster_joint="global"``, L_cluster's joint distribution J. The equations themselves are
    :mod:`vilseg_d2.modeling.losses`. Every schedule takes the training iteration as an
    argument (the trainer's ``iter``); nothing here counts steps.

    ``forward(outputs, iteration)`` takes (only those of the objectives in force, see
    :meth:`weights`):

    * ``image_emb``, ``text_emb``: B x D global image embeddings e_v and caption embeddings,
      and ``logit_scale``: the exponentiated scalar 1/tau (L_cross);
    * ``student``: V x B x P, Phi_a of the V local views; ``teacher``: B x P, Phi_a of the
      global view (L_vision);
    * ``clusters``, ``clusters_tf``: B x C x h x w soft assignments of the image and of g(image)
      with g's flip undone (L_cluster).

    and returns ``{"loss_vision", "loss_cross", "loss_cluster"}``, each already multiplied by
    its weight in force; an objective of weight 0 is absent.
    """

    @configurable
    def __init__(
        self,
        *,
        weight_dict: Dict[str, float],
        proj_dim: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_iters: int = 0,
        center_momentum: float = 0.9,
        aux_warmup_iters: Tuple[int, int] = (0, 0),
        cluster_joint: str = "global",
    ):
        """
        Args:
            weight_dict: weights of "loss_vision", "loss_cross", "loss_cluster" (0 ablates).
            proj_dim: P, the output size of Phi_a (the center's size).
            student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_iters: DINO
                temperatures; the teacher's rises linearly from ``warmup_teacher_temp``.
            center_momentum: EMA momentum of the teacher center.
            aux_warmup_iters: (start, end): L_vision and L_cluster are left out before iteration
                ``start`` and their weights then grow linearly to full at ``end``, so that the
                cross-modal contrast leaves chance first; (0, 0) = full weight from the start.
            cluster_joint: L_cluster's joint distribution J sums over "global": every pixel of
                the minibatch on every process (the paper's eq. 7, the same on any number of
                GPUs); "batch": this process's pixels; "image": each image's pixels, the loss
                averaged over the images.
        """
        super().__init__()
        expected = {"loss_vision", "loss_cross", "loss_cluster"}
        if set(weight_dict) != expected:
            raise ValueError(
                f"weight_dict must have the keys {sorted(expected)}, got {sorted(weight_dict)}."
            )
        if cluster_joint not in CLUSTER_JOINTS:
            raise ValueError(
                f"MODEL.VILSEG.CLUSTER_JOINT must be one of {CLUSTER_JOINTS}, "
                f"got {cluster_joint!r}."
            )
        start, end = (int(i) for i in aux_warmup_iters)
        if not 0 <= start <= end:
            raise ValueError(
                "MODEL.VILSEG.AUX_WARMUP_ITERS must be (start, end) with 0 <= start <= end, "
                f"got {aux_warmup_iters}."
            )
        self.weight_dict = {k: float(v) for k, v in weight_dict.items()}
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_iters = warmup_teacher_temp_iters
        self.center_momentum = center_momentum
        self.aux_warmup_iters = (start, end)
        self.cluster_joint = cluster_joint
        self.register_buffer("center", torch.zeros(1, proj_dim))  # DINO's teacher center

    @classmethod
    def from_config(cls, cfg):
        v = cfg.MODEL.VILSEG
        return {
            "weight_dict": {
                "loss_vision": v.VISION_WEIGHT,
                "loss_cross": v.CROSS_WEIGHT,
                "loss_cluster": v.CLUSTER_WEIGHT,
            },
            "proj_dim": v.PROJ_DIM,
            "student_temp": v.STUDENT_TEMP,
            "teacher_temp": v.TEACHER_TEMP,
            "warmup_teacher_temp": v.WARMUP_TEACHER_TEMP,
            "warmup_teacher_temp_iters": v.WARMUP_TEACHER_TEMP_ITERS,
            "center_momentum": v.CENTER_MOMENTUM,
            "aux_warmup_iters": tuple(v.AUX_WARMUP_ITERS),
            "cluster_joint": v.CLUSTER_JOINT,
        }

    # ------------------------------------------------------------------ schedules

    def teacher_temperature(self, iteration: int) -> float:
        """DINO's teacher temperature at ``iteration``: linear warm-up, then constant."""
        if iteration >= self.warmup_teacher_temp_iters:
            return self.teacher_temp
        frac = iteration / max(self.warmup_teacher_temp_iters, 1)
        return self.warmup_teacher_temp + frac * (self.teacher_temp - self.warmup_teacher_temp)

    def aux_factor(self, iteration: int) -> float:
        """The share of w_vision and w_cluster in force at ``iteration`` (see
        ``aux_warmup_iters``)."""
        start, end = self.aux_warmup_iters
        if iteration >= end:
            return 1.0
        if iteration < start:
            return 0.0
        return (iteration - start + 1) / (end - start + 1)

    def weights(self, iteration: int) -> Dict[str, float]:
        """The weights in force at ``iteration``, only those above 0 (the objectives to compute)."""
        aux = self.aux_factor(iteration)
        weights = {k: w * (1.0 if k == "loss_cross" else aux) for k, w in self.weight_dict.items()}
        return {k: w for k, w in weights.items() if w > 0}

    # ------------------------------------------------------------------ objectives

    def forward(self, outputs: Dict[str, torch.Tensor], iteration: int) -> Dict[str, torch.Tensor]:
        """The weighted objectives in force at ``iteration``; see the class docstring."""
        weights = self.weights(iteration)
        compute = {
            "loss_cross": self.loss_cross,
            "loss_vision": self.loss_vision,
            "loss_cluster": self.loss_cluster,
        }
        losses = {
            name: weights[name] * compute[name](outputs, iteration)
            for name in compute
            if name in weights
        }
        self._log(iteration)
        return losses

    def loss_cross(self, outputs: Dict[str, torch.Tensor], iteration: int) -> torch.Tensor:
        """L_cross over the global batch (every process's captions are negatives)."""
        image_all, text_all = gather_embeddings(outputs["image_emb"], outputs["text_emb"])
        return cross_modal_contrastive_loss(image_all, text_all, outputs["logit_scale"])

    def loss_vision(self, outputs: Dict[str, torch.Tensor], iteration: int) -> torch.Tensor:
        """L_vision with the current center, which then moves towards this batch's teacher mean."""
        teacher = outputs["teacher"]
        args = (
            outputs["student"],
            teacher,
            self.center,
            self.student_temp,
            self.teacher_temperature(iteration),
        )
        loss = self_distillation_loss(*args)
        storage = current_storage()
        if storage is not None:  # what DINO watches for collapse (before the center moves)
            for name, value in self_distillation_stats(*args).items():
                storage.put_scalar(f"vision_{name}", value)
        self._update_center(teacher.detach())
        return loss

    def loss_cluster(self, outputs: Dict[str, torch.Tensor], iteration: int) -> torch.Tensor:
        """L_cluster with J over the pixels ``cluster_joint`` names."""
        p, p_tf = outputs["clusters"], outputs["clusters_tf"]  # B x C x h x w
        if p.shape != p_tf.shape or p.dim() != 4:
            raise ValueError(
                "clusters and clusters_tf must both be B x C x h x w; "
                f"got {tuple(p.shape)}, {tuple(p_tf.shape)}."
            )
        batch, num_clusters = p.shape[:2]
        shape = (batch, -1, num_clusters) if self.cluster_joint == "image" else (-1, num_clusters)
        joint = joint_distribution(
            p.permute(0, 2, 3, 1).reshape(shape), p_tf.permute(0, 2, 3, 1).reshape(shape)
        )
        if self.cluster_joint == "global" and comm.get_world_size() > 1:
            # Autograd-aware sum: its backward sums the processes' gradients, so each process gets
            # world_size x its pixels' share, which DDP's averaging turns into the exact gradient.
            joint = dist_nn.all_reduce(joint)
        return mutual_information(joint)

    @torch.no_grad()
    def _update_center(self, teacher_logits: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher logits over the global batch."""
        batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor([float(teacher_logits.shape[0])], device=batch_sum.device)
        if comm.get_world_size() > 1:
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(
            batch_sum / count, alpha=1 - self.center_momentum
        )

    def _log(self, iteration: int) -> None:
        storage = current_storage()
        if storage is None:
            return
        storage.put_scalar(
            "teacher_temp", self.teacher_temperature(iteration), smoothing_hint=False
        )
        storage.put_scalar("aux_weight_factor", self.aux_factor(iteration), smoothing_hint=False)


def current_storage():
    """The current Detectron2 EventStorage (a trainer's), or None outside one."""
    try:
        return get_event_storage()
    except AssertionError:
        return None
