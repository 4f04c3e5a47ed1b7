"""ViLSeg: building, one training step, ablations, the flip undo (inference: test_segmenter.py)."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

import vilseg_d2  # noqa: F401
from vilseg_d2 import add_vilseg_config
from vilseg_d2.modeling import ViLSeg, ViLSegClusteringHead, ViLSegCriterion, ViLSegProjectionHead
from vilseg_d2.modeling.losses import mutual_information_loss

from helpers import tiny_cfg


def training_batch(batch=4, size=128, local=64, views=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randint(0, 256, s, dtype=torch.uint8, generator=g)  # noqa: E731
    return [
        {
            "image": rand(3, size, size),
            "local_crops": [rand(3, local, local) for _ in range(views)],
            "transformed_image": rand(3, size, size),
            "flip": i % 2 == 0,
            "caption": f"a red star and a blue ring {i}",
        }
        for i in range(batch)
    ]


def grad_norm(module):
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return sum(float(g.abs().sum()) for g in grads)


def test_paper_config_builds_with_random_init():
    cfg = get_cfg()
    add_vilseg_config(cfg)
    cfg.merge_from_file("configs/vilseg_vitb16.yaml")
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert isinstance(model, ViLSeg)
    assert model.backbone.patch_size == 16 and model.backbone.embed_dim == 512
    assert model.num_clusters == 25 and model.projection_head.out_dim == 2048
    assert model.backbone.conv_stem is None  # the paper keeps the plain ViT
    head_params = sum(p.numel() for p in model.clustering_head.parameters())
    assert head_params == 512 * 25 + 25


def test_one_training_step_gives_three_finite_losses_and_gradients_everywhere():
    model = build_model(tiny_cfg())
    model.train()
    losses = model(training_batch())
    assert set(losses) == {"loss_vision", "loss_cross", "loss_cluster"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in ("backbone", "text_encoder", "clustering_head", "projection_head"):
        assert grad_norm(getattr(model, part)) > 0, part
    assert model.logit_scale.grad is not None
    assert model.criterion.center.abs().sum() > 0  # DINO center moved


def test_cluster_loss_detached_from_encoder():
    model = build_model(tiny_cfg(MODEL__VILSEG__VISION_WEIGHT=0.0, MODEL__VILSEG__CROSS_WEIGHT=0.0))
    model.train()
    model(training_batch())["loss_cluster"].backward()
    assert (
        grad_norm(model.backbone) > 0
    )  # default: L_cluster trains the encoder too ("tightly coupled")

    model = build_model(
        tiny_cfg(
            MODEL__VILSEG__VISION_WEIGHT=0.0,
            MODEL__VILSEG__CROSS_WEIGHT=0.0,
            MODEL__VILSEG__DETACH_CLUSTER_ENCODER=True,
        )
    )
    model.train()
    model(training_batch())["loss_cluster"].backward()
    assert grad_norm(model.backbone) == 0 and grad_norm(model.clustering_head) > 0


def test_zero_weight_skips_the_branch(monkeypatch):
    model = build_model(
        tiny_cfg(MODEL__VILSEG__VISION_WEIGHT=0.0, MODEL__VILSEG__CLUSTER_WEIGHT=0.0)
    )
    model.train()
    calls = []
    real = model.backbone.forward_tokens
    monkeypatch.setattr(
        model.backbone, "forward_tokens", lambda x: calls.append(tuple(x.shape)) or real(x)
    )
    losses = model(training_batch(batch=3))
    assert set(losses) == {"loss_cross"}
    assert calls == [
        (3, 3, 128, 128)
    ]  # only the global views: no local crops, no transformed views


def test_loss_weights_scale_the_losses():
    torch.manual_seed(0)
    a = build_model(tiny_cfg())
    b = build_model(tiny_cfg(MODEL__VILSEG__CROSS_WEIGHT=2.0, MODEL__VILSEG__CLUSTER_WEIGHT=0.5))
    b.load_state_dict(a.state_dict())
    a.train(), b.train()
    la, lb = a(training_batch()), b(training_batch())
    assert lb["loss_cross"].item() == pytest.approx(2 * la["loss_cross"].item(), rel=1e-5)
    assert lb["loss_cluster"].item() == pytest.approx(
        0.5 * la["loss_cluster"].item(), rel=1e-4, abs=1e-7
    )


def test_auxiliary_objectives_warm_up_after_the_cross_modal_one():
    torch.manual_seed(0)
    full = build_model(tiny_cfg())
    warm = build_model(tiny_cfg(MODEL__VILSEG__AUX_WARMUP_ITERS=(2, 5)))
    warm.load_state_dict(full.state_dict())
    full.train(), warm.train()
    batch = training_batch(batch=2, views=2)
    reference = full(batch)
    factors = []
    for step in range(7):
        warm.criterion.center.copy_(
            full.criterion.center
        )  # the DINO center moves with each L_vision
        with EventStorage(step):  # the trainer's iteration drives the warm-up
            losses = warm(batch)
            if step < 2:  # left out: not even computed
                assert set(losses) == {"loss_cross"}
                factors.append(0.0)
                continue
            ref = full(batch)
        factor = losses["loss_cluster"].item() / ref["loss_cluster"].item()
        assert losses["loss_vision"].item() == pytest.approx(
            factor * ref["loss_vision"].item(), rel=1e-4
        )
        assert losses["loss_cross"].item() == pytest.approx(
            reference["loss_cross"].item(), rel=1e-5
        )
        factors.append(factor)
    assert factors == pytest.approx([0, 0, 1 / 4, 2 / 4, 3 / 4, 1, 1], rel=1e-4)
    assert set(warm.losses(batch, iteration=3)) == set(reference)  # or an explicit iteration
    with pytest.raises(ValueError, match="AUX_WARMUP_ITERS"):
        build_model(tiny_cfg(MODEL__VILSEG__AUX_WARMUP_ITERS=(5, 2)))


class _FlipEquivariantBackbone(nn.Module):
    """Per-pixel 1x1 conv over 4x4-pooled pixels: commutes with horizontal flips."""

    size_divisibility = 4
    embed_dim = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward_tokens(self, x):
        emb = self.conv(nn.functional.avg_pool2d(x, 4))
        return {"emb": emb, "cls": emb.mean((2, 3))}


def _stub_model():
    head = ViLSegClusteringHead(in_feature="emb", in_channels=8, num_clusters=5)
    with torch.no_grad():
        head.predictor.weight.mul_(5.0)  # decisive assignments: a clearly non-zero MI
    return ViLSeg(
        backbone=_FlipEquivariantBackbone(),
        text_encoder=nn.Identity(),
        clustering_head=head,
        projection_head=ViLSegProjectionHead(in_dim=8, out_dim=16),
        criterion=ViLSegCriterion(
            weight_dict={"loss_vision": 0.0, "loss_cross": 0.0, "loss_cluster": 1.0},
            proj_dim=16,
            cluster_joint="batch",
        ),
        pixel_mean=[128.0, 128.0, 128.0],
        pixel_std=[64.0, 64.0, 64.0],
    ).train()


def test_flip_of_the_transformed_view_is_undone_before_the_mi_loss():
    torch.manual_seed(0)
    model = _stub_model()
    # 4x4 blocks of random colours: every pooled "token" differs strongly, left != right
    image = (
        torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
        .repeat_interleave(4, 1)
        .repeat_interleave(4, 2)
    )
    same = [{"image": image, "transformed_image": image, "flip": False, "caption": ""}]
    flipped = [{"image": image, "transformed_image": image.flip(-1), "flip": True, "caption": ""}]
    wrong = [{"image": image, "transformed_image": image.flip(-1), "flip": False, "caption": ""}]
    l_same = model(same)["loss_cluster"].item()
    l_flipped = model(flipped)["loss_cluster"].item()
    assert l_same < -0.1  # real information between the views
    assert l_flipped == pytest.approx(l_same, rel=1e-5)
    assert (
        model(wrong)["loss_cluster"].item() > l_same + 0.01
    )  # not undoing the flip loses information


def test_per_image_joint_distribution_averages_the_images():
    torch.manual_seed(0)
    model = _stub_model()
    blocks = (
        torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
        .repeat_interleave(4, 1)
        .repeat_interleave(4, 2)
    )
    dark, light = (torch.full((3, 16, 16), v, dtype=torch.uint8) for v in (0, 255))

    def as_batch(*images):
        return [
            {"image": im, "transformed_image": im, "flip": False, "caption": ""} for im in images
        ]

    # Two flat images, each mostly in a cluster of its own: one J over the batch tells them apart
    # (at most ln 2 nats); within one image all pixels are alike: nothing to tell apart.
    assert -math.log(2) < model(as_batch(dark, light))["loss_cluster"].item() < -0.3
    model.criterion.cluster_joint = "image"
    assert abs(model(as_batch(dark, light))["loss_cluster"].item()) < 1e-6
    alone = [model(as_batch(im))["loss_cluster"].item() for im in (blocks, light)]
    assert model(as_batch(blocks, light))["loss_cluster"].item() == pytest.approx(
        sum(alone) / 2, rel=1e-5
    )
    # and each image's J is over its own h x w pixels (C x h x w maps read pixel by pixel)
    with torch.no_grad():
        emb = model.backbone.forward_tokens(model._normalize([blocks]))["emb"]
        p = model.clustering_head({"emb": emb})[0]  # C x h x w
    pixels = p.flatten(1).t()  # hw x C
    assert alone[0] == pytest.approx(mutual_information_loss(pixels, pixels).item(), rel=1e-5)
    with pytest.raises(ValueError, match="CLUSTER_JOINT"):
        build_model(tiny_cfg(MODEL__VILSEG__CLUSTER_JOINT="pixel"))
