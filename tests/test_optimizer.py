"""Parameter groups of the optimizer: weight decay and the clustering head's learning rate."""

import pytest
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler

from vilseg_d2.engine.optimizer import build_vilseg_optimizer

from helpers import tiny_cfg


def _group_of(optimizer, param):
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


def test_no_decay_on_norms_biases_and_embeddings():
    cfg = tiny_cfg(SOLVER__CLUSTER_HEAD_LR_MULTIPLIER=1.0)  # two groups
    model = build_model(cfg)
    opt = build_vilseg_optimizer(cfg, model)
    assert len(opt.param_groups) == 2
    visual = model.backbone.visual
    assert _group_of(opt, visual.positional_embedding)["weight_decay"] == 0.0
    assert _group_of(opt, model.logit_scale)["weight_decay"] == 0.0
    assert _group_of(opt, visual.ln_post.weight)["weight_decay"] == 0.0
    assert (
        _group_of(opt, visual.transformer.resblocks[0].mlp.c_fc.weight)["weight_decay"]
        == cfg.SOLVER.WEIGHT_DECAY
    )


def test_cluster_head_learning_rate_multiplier_follows_the_schedule():
    cfg = tiny_cfg(SOLVER__CLUSTER_HEAD_LR_MULTIPLIER=10.0, SOLVER__WARMUP_ITERS=0)
    model = build_model(cfg)
    opt = build_vilseg_optimizer(cfg, model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    head = model.clustering_head.predictor
    base = cfg.SOLVER.BASE_LR
    assert _group_of(opt, head.weight)["lr"] == pytest.approx(10 * base)
    assert _group_of(opt, head.weight)["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY
    assert _group_of(opt, head.bias)["weight_decay"] == 0.0
    assert _group_of(opt, model.logit_scale)["lr"] == pytest.approx(base)

    scheduler = build_lr_scheduler(cfg, opt)
    for _ in range(cfg.SOLVER.STEPS[0] + 1):
        opt.step()
        scheduler.step()
    gamma = cfg.SOLVER.GAMMA
    assert _group_of(opt, head.weight)["lr"] == pytest.approx(10 * base * gamma)
    assert _group_of(opt, model.logit_scale)["lr"] == pytest.approx(base * gamma)


def test_projection_head_learning_rate_multiplier():
    cfg = tiny_cfg(
        SOLVER__CLUSTER_HEAD_LR_MULTIPLIER=10.0, SOLVER__PROJECTION_HEAD_LR_MULTIPLIER=30.0
    )
    model = build_model(cfg)
    opt = build_vilseg_optimizer(cfg, model)
    base = cfg.SOLVER.BASE_LR
    assert _group_of(opt, model.projection_head.last_layer.weight)["lr"] == pytest.approx(30 * base)
    assert _group_of(opt, model.clustering_head.predictor.weight)["lr"] == pytest.approx(10 * base)
    assert _group_of(opt, model.logit_scale)["lr"] == pytest.approx(base)
    assert len(opt.param_groups) == 2 + 2 + 1  # the projection head (cosine logits) has no bias
