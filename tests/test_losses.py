"""The three objectives against independent computations (DESIGN section 4)."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from vilseg_d2.modeling.losses import (
    cross_modal_contrastive_loss,
    mutual_information_loss,
    self_distillation_loss,
)

# ----------------------------------------------------------------- L_cross


@pytest.mark.parametrize("batch,dim,scale", [(2, 8, 1.0), (16, 32, 1 / 0.07), (7, 5, 100.0)])
def test_cross_modal_equals_open_clip_cliploss(batch, dim, scale):
    img = torch.randn(batch, dim, requires_grad=True)
    txt = torch.randn(batch, dim, requires_grad=True)
    ours = cross_modal_contrastive_loss(img, txt, torch.tensor(scale))
    ref = ClipLoss()(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), torch.tensor(scale))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    ours.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()


def test_cross_modal_matches_paper_formula_and_extremes():
    img = torch.randn(4, 6)
    txt = torch.randn(4, 6)
    tau = 0.07
    cos = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    # eq. 3-4, image->text, plus its text->image counterpart
    i2t = -torch.stack(
        [torch.log(torch.exp(cos[m, m] / tau) / torch.exp(cos[m] / tau).sum()) for m in range(4)]
    ).mean()
    t2i = -torch.stack(
        [torch.log(torch.exp(cos[m, m] / tau) / torch.exp(cos[:, m] / tau).sum()) for m in range(4)]
    ).mean()
    assert cross_modal_contrastive_loss(img, txt, 1 / tau).item() == pytest.approx(
        ((i2t + t2i) / 2).item(), rel=1e-5
    )
    # perfectly aligned, orthogonal pairs with a large scale -> loss ~ 0; identical rows -> log(B)
    eye = torch.eye(4)
    assert cross_modal_contrastive_loss(eye, eye, 100.0).item() < 1e-6
    same = torch.ones(4, 6)
    assert cross_modal_contrastive_loss(same, same, 10.0).item() == pytest.approx(
        math.log(4), rel=1e-6
    )


def test_cross_modal_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ"):
        cross_modal_contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), 1.0)


# ----------------------------------------------------------------- L_vision


def _self_distillation_by_loops(student, teacher, center, ts, tt):
    v_count, batch, _ = student.shape
    total = 0.0
    for v in range(v_count):
        for b in range(batch):
            t = torch.exp((teacher[b] - center) / tt)
            t = t / t.sum()
            s = torch.exp(student[v, b] / ts)
            log_s = torch.log(s / s.sum())
            total += float(-(t * log_s).sum())
    return total / (v_count * batch)


@pytest.mark.parametrize("views,batch,dim", [(6, 3, 16), (1, 1, 2), (2, 5, 64)])
def test_self_distillation_equals_transcription(views, batch, dim):
    student = torch.randn(views, batch, dim, requires_grad=True)
    teacher = torch.randn(batch, dim, requires_grad=True)
    center = torch.randn(dim) * 0.1
    ours = self_distillation_loss(student, teacher, center, 0.1, 0.04)
    ref = _self_distillation_by_loops(
        student.detach().double(), teacher.detach().double(), center.double(), 0.1, 0.04
    )
    assert ours.item() == pytest.approx(ref, rel=1e-4)
    ours.backward()
    assert teacher.grad is None, "no gradient may flow into the teacher (global view) logits"
    assert torch.isfinite(student.grad).all()


def test_self_distillation_center_broadcasts_and_extreme_logits_stay_finite():
    student = (torch.randn(2, 3, 8) * 1e3).requires_grad_()
    teacher = torch.randn(3, 8) * 1e3
    loss_1d = self_distillation_loss(student, teacher, torch.zeros(8), 0.1, 0.04)
    loss_2d = self_distillation_loss(student, teacher, torch.zeros(1, 8), 0.1, 0.04)
    assert torch.isfinite(loss_1d) and loss_1d.item() == pytest.approx(loss_2d.item())
    loss_1d.backward()
    assert torch.isfinite(student.grad).all()


# ----------------------------------------------------------------- L_cluster


def _iid_loss_reference(x_out, x_tf_out, eps=sys.float_info.epsilon):
    """IIC's IID_loss (Ji et al. 2019) written out step by step, lambda = 1, in-place clamps."""
    _, k = x_out.shape
    p_i_j = (x_out.unsqueeze(2) * x_tf_out.unsqueeze(1)).sum(dim=0)  # k x k, outer products summed
    p_i_j = (p_i_j + p_i_j.t()) / 2.0
    p_i_j = p_i_j / p_i_j.sum()
    p_i = p_i_j.sum(dim=1).view(k, 1).expand(k, k).clone()
    p_j = p_i_j.sum(dim=0).view(1, k).expand(k, k).clone()
    p_i_j = p_i_j.clone()
    p_i_j[p_i_j < eps] = eps
    p_j[p_j < eps] = eps
    p_i[p_i < eps] = eps
    return (-p_i_j * (torch.log(p_i_j) - torch.log(p_j) - torch.log(p_i))).sum()


def _softmax_rows(n, c, scale=1.0):
    return (torch.randn(n, c) * scale).softmax(-1)


@pytest.mark.parametrize("n,c,scale", [(100, 25, 1.0), (50, 2, 3.0), (1000, 10, 10.0), (1, 5, 1.0)])
def test_mutual_information_equals_iic_reference(n, c, scale):
    p, p_tf = _softmax_rows(n, c, scale).double(), _softmax_rows(n, c, scale).double()
    assert mutual_information_loss(p, p_tf).item() == pytest.approx(
        _iid_loss_reference(p, p_tf).item(), rel=1e-9, abs=1e-12
    )
    # and in fp32, as in training
    assert mutual_information_loss(p.float(), p_tf.float()).item() == pytest.approx(
        _iid_loss_reference(p, p_tf).item(), rel=1e-4, abs=1e-6
    )


def test_mutual_information_degenerate_inputs_and_gradients():
    c = 6
    # all pixels in one cluster: no information, loss 0 (up to eps terms), finite gradients
    logits = torch.zeros(64, c)
    logits[:, 0] = 50.0
    logits.requires_grad_()
    p = logits.softmax(-1)
    loss = mutual_information_loss(p, p)
    assert abs(loss.item()) < 1e-6
    assert loss.item() == pytest.approx(
        _iid_loss_reference(p.detach(), p.detach()).item(), abs=1e-9
    )
    loss.backward()
    assert torch.isfinite(logits.grad).all()

    # one-hot, uniformly spread, identical in both views: the maximum, -ln C
    onehot = F.one_hot(torch.arange(60) % c, c).float()
    assert mutual_information_loss(onehot, onehot).item() == pytest.approx(-math.log(c), rel=1e-5)
    assert mutual_information_loss(onehot, onehot).item() == pytest.approx(
        _iid_loss_reference(onehot, onehot).item(), rel=1e-6
    )

    # C = 2, independent views: I = 0
    a = F.one_hot(torch.tensor([0, 0, 1, 1]), 2).float()
    b = F.one_hot(torch.tensor([0, 1, 0, 1]), 2).float()
    assert abs(mutual_information_loss(a, b).item()) < 1e-6

    # uniform soft assignments: finite value and finite gradient
    u = torch.full((10, c), 1.0 / c, requires_grad=True)
    loss = mutual_information_loss(u, u)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(u.grad).all()


def test_mutual_information_per_group_is_the_mean_of_the_groups():
    torch.manual_seed(0)
    g, n, c = 4, 64, 12
    p, p_tf = _softmax_rows(g * n, c, 3.0).view(g, n, c), _softmax_rows(g * n, c, 3.0).view(g, n, c)
    per_group = torch.stack([_iid_loss_reference(p[i], p_tf[i]) for i in range(g)]).mean()
    assert mutual_information_loss(p, p_tf).item() == pytest.approx(per_group.item(), rel=1e-5)
    one_group = mutual_information_loss(p[:1], p_tf[:1]).item()
    assert one_group == pytest.approx(mutual_information_loss(p[0], p_tf[0]).item(), rel=1e-6)
    # Each image in its own cluster: one J over all pixels finds 4 clusters (-ln 4), while
    # per image every J holds one cluster only: no information.
    onehot = F.one_hot(torch.arange(g).repeat_interleave(n), c).float().view(g, n, c)
    all_pixels = onehot.view(-1, c)
    assert mutual_information_loss(all_pixels, all_pixels).item() == pytest.approx(
        -math.log(g), rel=1e-5
    )
    assert abs(mutual_information_loss(onehot, onehot).item()) < 1e-6


def test_mutual_information_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="N x C"):
        mutual_information_loss(torch.rand(4, 3), torch.rand(4, 2))
