"""D2OpenCLIPViT and D2OpenCLIPViTPyramid: shapes, interpolation, options, loading, pluggability."""

import time

import open_clip
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model

import vilseg_d2  # noqa: F401
from vilseg_d2 import add_vilseg_backbone_config
from vilseg_d2.modeling import D2OpenCLIPViT, D2OpenCLIPViTPyramid
from vilseg_d2.modeling.open_clip_model import create_open_clip_model, resolve_pretrained


def backbone_cfg(**kw):
    cfg = get_cfg()
    add_vilseg_backbone_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "D2OpenCLIPViT"
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = "ViLSeg-Tiny"
    cfg.MODEL.CLIP_VIT.OUT_FEATURES = ["emb", "res"]
    for k, v in kw.items():
        cfg.merge_from_list([k.replace("__", "."), v])
    return cfg


@pytest.mark.parametrize("size", [(128, 128), (64, 192), (16, 16), (336, 512)])
def test_output_shape_is_truthful_for_any_multiple_of_the_patch(size):
    bb = build_backbone(backbone_cfg())
    assert bb.size_divisibility == 16
    shapes = bb.output_shape()
    assert (
        shapes["emb"].channels == 128
        and shapes["res"].channels == 128
        and shapes["emb"].stride == 16
    )
    out = bb(torch.randn(2, 3, *size))
    for name, spec in shapes.items():
        assert out[name].shape == (2, spec.channels, size[0] // spec.stride, size[1] // spec.stride)


def test_native_size_uses_the_positional_embedding_unchanged_and_other_sizes_interpolate():
    bb = build_backbone(backbone_cfg())
    pos = bb.visual.positional_embedding
    assert bb._pos_embed(8, 8) is pos
    other = bb._pos_embed(4, 12)
    assert other.shape == (1 + 48, pos.shape[1])
    assert torch.equal(other[0], pos[0])  # class token's embedding is kept
    # interpolating to the same grid through the general path is the identity
    bb.grid_size = (8, 8)
    assert torch.allclose(bb._pos_embed(8, 8), pos)


def test_per_token_embedding_is_proj_of_ln_post_and_cls_matches_open_clip():
    clip = create_open_clip_model("ViLSeg-Tiny")
    bb = D2OpenCLIPViT(visual=clip.visual, out_features=["emb", "res"]).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        tokens = bb.forward_tokens(x)
        ref = clip.visual(x)  # open_clip's pooled ('tok' = CLS) embedding
        emb_from_res = bb.visual.ln_post(tokens["res"].flatten(2).transpose(1, 2)) @ bb.visual.proj
    assert torch.allclose(tokens["cls"], ref, atol=1e-5)
    assert torch.allclose(tokens["emb"].flatten(2).transpose(1, 2), emb_from_res, atol=1e-5)


def test_bad_input_sizes_give_clear_errors():
    bb = build_backbone(backbone_cfg())
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        bb(torch.randn(1, 3, 100, 128))
    with pytest.raises(ValueError, match="3 x H x W"):
        bb(torch.randn(1, 1, 128, 128))
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(backbone_cfg(MODEL__CLIP_VIT__OUT_FEATURES=["p5"]))


def test_conv_stem_and_freeze():
    stem = build_backbone(
        backbone_cfg(MODEL__CLIP_VIT__CONV_STEM=True, MODEL__CLIP_VIT__CONV_STEM_WIDTH=8)
    )
    assert stem.conv_stem is not None and not hasattr(stem.visual, "conv1")
    assert stem(torch.randn(1, 3, 96, 64))["emb"].shape == (1, 128, 6, 4)
    deep = build_backbone(
        backbone_cfg(
            MODEL__CLIP_VIT__CONV_STEM=True,
            MODEL__CLIP_VIT__CONV_STEM_WIDTH=8,
            MODEL__CLIP_VIT__CONV_STEM_DEPTH=2,
        )
    )
    convs = [
        m
        for m in deep.conv_stem.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert [c.stride[0] for c in convs] == [
        2,
        1,
        1,
    ] * 4  # per stage: one stride-2 conv + 2 stride-1 convs
    assert deep(torch.randn(1, 3, 96, 64))["emb"].shape == (1, 128, 6, 4)

    frozen = build_backbone(backbone_cfg(MODEL__CLIP_VIT__FREEZE=True))
    assert not any(p.requires_grad for p in frozen.parameters())


def test_batch_norm_stem_and_a_frozen_stem_keeps_its_statistics():
    cfg = dict(
        MODEL__CLIP_VIT__CONV_STEM=True,
        MODEL__CLIP_VIT__CONV_STEM_WIDTH=8,
        MODEL__CLIP_VIT__CONV_STEM_NORM="BN",
    )
    bn = build_backbone(backbone_cfg(**cfg)).train()
    norms = [m for m in bn.conv_stem.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 4  # one per stride-2 conv of a patch-16 stem
    bn(torch.randn(4, 3, 64, 64))
    assert all(int(m.num_batches_tracked) == 1 for m in norms)

    frozen = build_backbone(backbone_cfg(**cfg, MODEL__CLIP_VIT__FREEZE=True)).train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    before = [
        m.running_mean.clone()
        for m in frozen.conv_stem.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    frozen(torch.randn(4, 3, 64, 64) + 3)
    after = [
        m.running_mean for m in frozen.conv_stem.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build_backbone(backbone_cfg())
    ckpt = build_backbone(backbone_cfg(MODEL__CLIP_VIT__GRAD_CHECKPOINTING=True))
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.visual.transformer.grad_checkpointing
    x = torch.randn(2, 3, 64, 64)
    for bb in (plain, ckpt):
        bb(x)["emb"].sum().backward()
    for (name, p1), (_, p2) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-5), name


def test_local_checkpoint_path_loads_and_bad_specs_fail_fast(tmp_path):
    src = open_clip.create_model("ViLSeg-Tiny")
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    bb = build_backbone(backbone_cfg(MODEL__OPEN_CLIP__PRETRAINED=str(path)))
    assert torch.equal(bb.visual.positional_embedding, src.visual.positional_embedding)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_pretrained("ViLSeg-Tiny", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="Known tags"):
        resolve_pretrained("ViT-B-16", "no_such_tag")
    with pytest.raises(ValueError, match="not an open_clip model"):
        create_open_clip_model("ViT-Nope-1")


def test_known_tag_offline_fails_at_once_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="MODEL.OPEN_CLIP.PRETRAINED /path/to/checkpoint"):
        resolve_pretrained("ViT-B-16", "openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5  # no minute of hub retries


def test_pyramid_gives_p2_to_p6():
    cfg = backbone_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2OpenCLIPViTPyramid"
    cfg.MODEL.CLIP_VIT_PYRAMID.OUT_CHANNELS = 32
    bb = build_backbone(cfg)
    assert isinstance(bb, D2OpenCLIPViTPyramid)
    shapes = bb.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }
    out = bb(torch.randn(1, 3, 128, 192))
    for k, spec in shapes.items():
        assert out[k].shape == (1, 32, 128 // spec.stride, 192 // spec.stride)


def test_stock_semantic_segmentor_trains_on_the_pyramid_backbone():
    """Pluggability: Detectron2's own SemanticSegmentor + SemSegFPNHead, a few steps, loss goes
    down."""
    cfg = backbone_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.BACKBONE.NAME = "D2OpenCLIPViTPyramid"
    cfg.MODEL.CLIP_VIT_PYRAMID.OUT_CHANNELS = 32
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
    model = build_model(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    sem_seg = torch.zeros(2, 64, 64, dtype=torch.long)
    sem_seg[:, :, 32:] = 1
    sem_seg[:, 40:, :] = 2
    batch = [{"image": images[i], "sem_seg": sem_seg[i]} for i in range(2)]
    losses = []
    for _ in range(8):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        out = model([{"image": images[0], "height": 50, "width": 70}])
    assert out[0]["sem_seg"].shape == (3, 50, 70)
