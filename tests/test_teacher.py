"""L_vision's teachers: the network itself (the paper) and DINO's momentum teacher."""

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from vilseg_d2.modeling import MomentumTeacher
from vilseg_d2.modeling.losses import self_distillation_stats

from helpers import tiny_cfg
from test_meta_arch import training_batch


def test_momentum_follows_dino_cosine_schedule_over_the_vision_phase():
    lin = torch.nn.Linear(2, 2)
    teacher = MomentumTeacher(
        lin, torch.nn.Identity(), base_momentum=0.99, start_iter=10, max_iter=30
    )
    assert (
        teacher.momentum(0) == teacher.momentum(9) == 0.0
    )  # copies the student until L_vision starts
    assert teacher.momentum(10) == pytest.approx(0.99)
    assert teacher.momentum(20) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)
    assert teacher.momentum(30) == teacher.momentum(99) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="TEACHER_MOMENTUM"):
        MomentumTeacher(lin, torch.nn.Identity(), base_momentum=1.5, start_iter=0, max_iter=1)


def test_update_is_an_exponential_moving_average_and_takes_no_gradient():
    student = torch.nn.Linear(3, 2)
    teacher = MomentumTeacher(
        student, torch.nn.Identity(), base_momentum=0.9, start_iter=0, max_iter=10**9
    )
    assert not any(p.requires_grad for p in teacher.parameters())
    before = teacher.backbone.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student, torch.nn.Identity(), iteration=0)
    torch.testing.assert_close(teacher.backbone.weight, 0.9 * before + 0.1 * student.weight)
    teacher.start_iter = 5
    teacher.update(student, torch.nn.Identity(), iteration=0)  # before L_vision: a copy
    torch.testing.assert_close(teacher.backbone.weight, student.weight)


def test_ema_teacher_gives_the_teacher_logits_and_is_checkpointed():
    model = build_model(tiny_cfg(MODEL__VILSEG__TEACHER="ema")).train()
    assert isinstance(model.teacher, MomentumTeacher)
    assert any(k.startswith("teacher.backbone.") for k in model.state_dict())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    with EventStorage(0) as storage:
        losses = model(training_batch(batch=3, views=2))
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    logged = storage.latest()
    assert 0 < logged["vision_teacher_entropy"][0] <= math.log(model.projection_head.out_dim) + 1e-4
    paper = build_model(tiny_cfg(MODEL__VILSEG__TEACHER="self"))
    assert paper.teacher is None  # the paper's: the network itself
    with pytest.raises(ValueError, match="TEACHER"):
        build_model(tiny_cfg(MODEL__VILSEG__TEACHER="mean"))


def test_collapse_statistics():
    uniform = self_distillation_stats(
        torch.zeros(2, 4, 8), torch.zeros(4, 8), torch.zeros(8), 0.1, 0.04
    )
    assert uniform["teacher_entropy"] == pytest.approx(math.log(8)) and uniform[
        "kl"
    ] == pytest.approx(0.0, abs=1e-6)
    assert uniform["teacher_std"] == 0 and uniform["teacher_top_share"] == 1.0
    one_hot = torch.eye(8)[:4] * 10
    sharp = self_distillation_stats(one_hot.expand(2, 4, 8), one_hot, torch.zeros(8), 0.1, 0.04)
    assert (
        sharp["teacher_entropy"] < 1e-3
        and sharp["kl"] < 1e-3
        and sharp["teacher_top_share"] == 0.25
    )


def test_teacher_starts_as_the_network_of_a_checkpoint_without_one():
    torch.manual_seed(0)
    # the paper's teacher: no teacher weights in its state dict
    trained = build_model(tiny_cfg(MODEL__VILSEG__TEACHER="self"))
    with torch.no_grad():
        trained.projection_head.last_layer.weight.add_(1.0)
    model = build_model(tiny_cfg(MODEL__VILSEG__TEACHER="ema"))
    model.load_state_dict(trained.state_dict())
    torch.testing.assert_close(
        model.teacher.projection_head.last_layer.weight, trained.projection_head.last_layer.weight
    )
    for (name, t), s in zip(
        model.teacher.backbone.state_dict().items(), trained.backbone.state_dict().values()
    ):
        torch.testing.assert_close(t, s, msg=name)
