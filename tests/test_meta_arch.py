"""ViLSeg: building, one training step, ablations, the flip undo, the three inference modes."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.utils.events import EventStorage
from torch import nn

import vilseg_d2  # noqa: F401
from vilseg_d2 import add_vilseg_config
from vilseg_d2.modeling import ViLSeg, ViLSegClusteringHead, ViLSegCriterion, ViLSegProjectionHead
from vilseg_d2.modeling.losses import mutual_information_loss
from vilseg_d2.modeling.reuse import ReusingSegmenter, reuse_image_features
from vilseg_d2.modeling.segmenter import _windows

from helpers import square_on_texture, tiny_cfg


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


@pytest.fixture(scope="module")
def eval_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


@pytest.mark.parametrize("mode", ["online", "kmeans", "dense"])
def test_inference_odd_size_all_modes(eval_model, mode):
    eval_model.inference_mode = mode
    image = torch.randint(0, 256, (3, 333, 517), dtype=torch.uint8)
    out = eval_model([{"image": image, "vocabulary": ["circle", "star", "sky, clouds"]}])[0]
    assert out["sem_seg"].shape == (3, 333, 517)
    assert torch.allclose(out["sem_seg"].sum(0), torch.ones(333, 517), atol=1e-4)  # probabilities
    assert out["clusters"].shape == (333, 517) and out["clusters"].dtype == torch.long
    # resized input: output at the original height/width
    out = eval_model([{"image": image, "height": 100, "width": 150, "vocabulary": ["a", "b"]}])[0]
    assert out["sem_seg"].shape == (2, 100, 150)
    eval_model.inference_mode = "online"


def test_online_mode_gives_each_cluster_one_class_distribution(eval_model):
    out = eval_model(
        [
            {
                "image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8),
                "vocabulary": ["a", "b", "c"],
            }
        ]
    )[0]
    for c in out["clusters"].unique():
        region = out["sem_seg"][:, out["clusters"] == c]
        assert torch.allclose(region, region[:, :1].expand_as(region))


def test_kmeans_mode_is_deterministic_for_a_seed(eval_model):
    eval_model.inference_mode = "kmeans"
    x = [
        {
            "image": torch.randint(0, 256, (3, 160, 224), dtype=torch.uint8),
            "vocabulary": ["a", "b", "c"],
        }
    ]
    torch.manual_seed(1)
    a = eval_model(x)[0]
    torch.manual_seed(2)
    b = eval_model(x)[0]
    assert torch.equal(a["clusters"], b["clusters"]) and torch.equal(a["sem_seg"], b["sem_seg"])
    eval_model.inference_mode = "online"


def test_text_features_computed_once_per_vocabulary(eval_model, monkeypatch):
    calls = []
    real = eval_model.text_encoder.forward
    monkeypatch.setattr(
        eval_model.text_encoder, "forward", lambda t: calls.append(len(t)) or real(t)
    )
    vocab = ["zebra", "yak"]
    for _ in range(3):
        eval_model(
            [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "vocabulary": vocab}]
        )
    assert calls == [2]


@pytest.mark.parametrize("mode", ["online", "kmeans", "dense"])
def test_reused_image_features_give_the_same_segmentation(eval_model, monkeypatch, mode):
    """Inside reuse_image_features, every image, rule, vocabulary, output size, window size and
    refinement scores exactly as outside, while the encoder runs once per image and setting."""
    rules = [(0.5, 0.0), (0.9, 0.3), (0.99, 0.6)]
    gen = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, 96, 128), generator=gen, dtype=torch.uint8) for _ in range(2)
    ]
    settings = [  # (refine_iters, sliding_window_size, vocabulary, output height / width)
        (3, 0, ["background", "circle", "star"], None),
        (0, 0, ["background", "circle", "star"], None),
        (0, 0, ["background", "heart", "ring", "cross"], (48, 80)),
        (3, 64, ["background", "circle", "star"], None),
    ]

    def run():
        outs = []
        for iters, window, vocab, size in settings:
            eval_model.refine_iters = iters
            eval_model.sliding_window_size, eval_model.sliding_window_stride = window, 32
            for thr, sim in rules:
                eval_model.bg_threshold, eval_model.bg_global_similarity = thr, sim
                extra = {"height": size[0], "width": size[1]} if size else {}
                outs.append(
                    eval_model([{"image": im, "vocabulary": vocab, **extra} for im in images])
                )
        return outs

    eval_model.inference_mode = mode
    try:
        plain = run()
        calls = []
        real = eval_model.backbone.forward_tokens
        monkeypatch.setattr(
            eval_model.backbone, "forward_tokens", lambda x: calls.append(1) or real(x)
        )
        with reuse_image_features(eval_model):
            for cached, expected in zip(run(), plain):
                for a, b in zip(cached, expected):
                    assert torch.equal(a["sem_seg"], b["sem_seg"]) and torch.equal(
                        a["clusters"], b["clusters"]
                    )
                cached[0]["clusters"].fill_(7)  # a caller editing its output changes nothing stored
            eval_model.refine_iters, eval_model.sliding_window_size = settings[0][:2]
            eval_model.bg_threshold, eval_model.bg_global_similarity = rules[0]
            again = eval_model([{"image": images[0], "vocabulary": settings[0][2]}])[0]
            assert torch.equal(again["clusters"], plain[0][0]["clusters"])
        # per image, the encoder ran once for the whole image at its own size (the first two
        # settings), once for the resized output (the regions are made at the output size) and
        # once per window
        windows = len(_windows(96, 64, 32)) * len(_windows(128, 64, 32))
        assert len(calls) == len(images) * (2 + windows)
        assert not isinstance(eval_model.segmenter, ReusingSegmenter)  # released after the block
        eval_model([{"image": images[0], "vocabulary": ["background", "circle"]}])
        assert len(calls) == len(images) * (2 + windows) + 1  # outside, computed anew
        for i in range(len(images)):  # the rules matter for each image
            assert (
                len({tuple(out[i]["sem_seg"].argmax(0).unique().tolist()) for out in plain[3:6]})
                > 1
            )
    finally:
        eval_model.inference_mode, eval_model.refine_iters = "online", 0
        eval_model.bg_threshold, eval_model.bg_global_similarity = 0.0, 0.0
        eval_model.sliding_window_size = 0


def test_vocabulary_sources(eval_model):
    name = "vilseg_test_vocab_dataset"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(stuff_classes=["background", "circle", "star", "ring"])
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    assert eval_model([{"image": image, "dataset_name": name}])[0]["sem_seg"].shape[0] == 4
    eval_model.set_vocabulary(["x", "y"])
    assert eval_model([{"image": image}])[0]["sem_seg"].shape[0] == 2
    eval_model.vocabulary = None
    with pytest.raises(ValueError, match="No vocabulary"):
        eval_model([{"image": image}])


def test_background_threshold_and_sliding_window(eval_model):
    image = torch.randint(0, 256, (3, 96, 400), dtype=torch.uint8)
    eval_model.bg_threshold = 0.99  # higher than any class probability of 2 classes but their max
    out = eval_model([{"image": image, "vocabulary": ["background", "circle", "star"]}])[0]
    assert out["sem_seg"].shape == (3, 96, 400)
    assert torch.allclose(out["sem_seg"][0], torch.full((96, 400), 0.99))
    eval_model.bg_threshold = 0.0

    eval_model.sliding_window_size, eval_model.sliding_window_stride = 128, 96
    windowed = eval_model([{"image": image, "vocabulary": ["a", "b"]}])[0]
    assert windowed["sem_seg"].shape == (2, 96, 400)
    assert torch.allclose(windowed["sem_seg"].sum(0), torch.ones(96, 400), atol=1e-4)
    eval_model.sliding_window_size = 0


def test_crop_sizes_must_be_multiples_of_the_patch():
    with pytest.raises(
        ValueError,
        match=r"INPUT.VILSEG.LOCAL_SIZE=60 is not a multiple of the backbone's patch size 16",
    ):
        build_model(tiny_cfg(INPUT__VILSEG__LOCAL_SIZE=60))
    with pytest.raises(ValueError, match=r"INPUT.VILSEG.GLOBAL_SIZE=100"):
        build_model(tiny_cfg(INPUT__VILSEG__GLOBAL_SIZE=100))


def test_sliding_windows_cover_the_image_without_extra_area():

    assert _windows(100, 448, 320) == [(0, 100)]
    assert _windows(2048, 448, 448) == [
        (0, 448),
        (448, 896),
        (896, 1344),
        (1344, 1792),
        (1792, 2048),
    ]
    wins = _windows(1024, 448, 320)
    assert wins[0][0] == 0 and wins[-1][1] == 1024
    assert all(b - a <= 448 for a, b in wins) and all(
        a2 <= b1 for (_, b1), (a2, _) in zip(wins, wins[1:])
    )


def _object_on_background_tokens(model, monkeypatch):
    """Make the backbone see 4 x 4 tokens: a 2 x 2 object (embedding b) on a background (a,
    orthogonal to b), whatever the image. e_v is 12a + 4b: cosine 0.95 with a, 0.32 with b."""
    D = model.backbone.embed_dim
    a, b = torch.zeros(D), torch.zeros(D)
    a[0], b[1] = 1.0, 1.0
    emb = a.view(1, D, 1, 1).repeat(1, 1, 4, 4)
    emb[0, :, 1:3, 1:3] = b.view(D, 1, 1)
    monkeypatch.setattr(model.backbone, "forward_tokens", lambda padded: {"emb": emb.clone()})


@pytest.mark.parametrize("mode", ["kmeans", "dense"])
def test_background_is_what_resembles_the_image_embedding(eval_model, monkeypatch, mode):
    _object_on_background_tokens(eval_model, monkeypatch)
    monkeypatch.setattr(eval_model, "inference_mode", mode)
    monkeypatch.setattr(eval_model, "bg_global_similarity", 0.9)
    inputs = [
        {
            "image": torch.zeros(3, 64, 64, dtype=torch.uint8),
            "vocabulary": ["background", "circle", "star"],
        }
    ]
    probs = eval_model(inputs)[0]["sem_seg"]
    assert probs.shape == (3, 64, 64) and torch.allclose(
        probs.sum(0), torch.ones(64, 64), atol=1e-4
    )
    labels = probs.argmax(0)
    assert (labels[24:40, 24:40] > 0).all()  # the object's inner pixels: a named class
    assert (labels[:8] == 0).all() and (labels[:, :8] == 0).all()  # the border: background
    monkeypatch.setattr(
        eval_model, "bg_global_similarity", 0.96
    )  # above both: nothing is background
    assert (eval_model(inputs)[0]["sem_seg"].argmax(0) > 0).all()


def test_refinement_snaps_the_token_grid_map_to_the_object(eval_model, monkeypatch):
    # The token map sees its object on tokens 1..2 (pixels 16..47); the image's object is the
    # flat square of pixels 20..43. Refinement moves the edge to the image's.
    _object_on_background_tokens(eval_model, monkeypatch)
    monkeypatch.setattr(eval_model, "inference_mode", "dense")
    monkeypatch.setattr(eval_model, "bg_global_similarity", 0.9)
    image, truth = square_on_texture(size=64, lo=20, hi=44)
    inputs = [
        {
            "image": (255 * image.clamp(0, 1)).to(torch.uint8),
            "vocabulary": ["background", "circle", "star"],
        }
    ]

    def iou(labels):
        return ((labels > 0) & truth).sum().item() / ((labels > 0) | truth).sum().item()

    coarse = eval_model(inputs)[0]["sem_seg"].argmax(0)
    monkeypatch.setattr(eval_model, "refine_iters", 10)
    refined = eval_model(inputs)[0]["sem_seg"]
    assert iou(coarse) < 0.5 and iou(refined.argmax(0)) > 0.9, (iou(coarse), iou(refined.argmax(0)))
    assert torch.allclose(refined.sum(0), torch.ones(64, 64), atol=1e-5)
    assert torch.equal(
        eval_model(inputs)[0]["clusters"], refined.argmax(0)
    )  # dense: the refined class ids
    # refined at the input's size, then resized to the requested one (clusters too)
    out = eval_model([{**inputs[0], "height": 32, "width": 48}])[0]
    torch.testing.assert_close(out["sem_seg"], sem_seg_postprocess(refined, (64, 64), 32, 48))
    assert out["clusters"].shape == (32, 48)
    with pytest.raises(ValueError, match="REFINE_ITERS"):
        build_model(tiny_cfg(MODEL__VILSEG__REFINE_ITERS=-1))
    with pytest.raises(
        ValueError, match="REFINE_DILATIONS"
    ):  # checked even while refinement is off
        build_model(tiny_cfg(MODEL__VILSEG__REFINE_DILATIONS=(0, 2)))


def test_background_is_the_class_named_background_wherever_it_stands(eval_model, monkeypatch):
    _object_on_background_tokens(eval_model, monkeypatch)
    monkeypatch.setattr(eval_model, "inference_mode", "dense")
    monkeypatch.setattr(eval_model, "bg_global_similarity", 0.9)
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    first = eval_model([{"image": image, "vocabulary": ["background", "circle", "star"]}])[0][
        "sem_seg"
    ]
    last = eval_model([{"image": image, "vocabulary": ["circle", "star", "Background"]}])[0][
        "sem_seg"
    ]
    torch.testing.assert_close(last, first[[1, 2, 0]])  # the same scores, in the vocabulary's order
    assert (last.argmax(0)[:8] == 2).all()  # the border is "Background", not the first class
    with pytest.raises(ValueError, match="names no 'background' class"):  # never a user's class
        eval_model([{"image": image, "vocabulary": ["star", "circle"]}])
    monkeypatch.setattr(eval_model, "bg_global_similarity", 0.0)  # rules off: matched by its text
    assert (
        eval_model([{"image": image, "vocabulary": ["star", "circle"]}])[0]["sem_seg"].shape[0] == 2
    )
