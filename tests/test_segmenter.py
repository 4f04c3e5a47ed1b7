"""ViLSeg's inference: the three modes, the vocabulary, background rules, sliding windows and
mask refinement."""

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess

import vilseg_d2  # noqa: F401
from vilseg_d2.modeling.reuse import ReusingSegmenter, reuse_image_features
from vilseg_d2.modeling.segmenter import _windows

from helpers import square_on_texture, tiny_cfg


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
