"""The text side: templates, synonyms, the per-vocabulary cache."""

import pytest
import torch
import torch.nn.functional as F

from vilseg_d2.modeling import ViLSegTextEncoder, parse_vocabulary
from vilseg_d2.modeling.text_encoder import PROMPT_TEMPLATES

from helpers import tiny_cfg


@pytest.fixture(scope="module")
def encoder():
    return ViLSegTextEncoder(tiny_cfg()).eval()


def test_parse_vocabulary():
    assert parse_vocabulary("cat; dog; sky, clouds") == ["cat", "dog", "sky, clouds"]
    assert parse_vocabulary("cat\n dog ;\n\n;") == ["cat", "dog"]


def test_templates():
    assert PROMPT_TEMPLATES["single"][0]("cat") == "a photo of a cat."
    assert len(PROMPT_TEMPLATES["imagenet"]) == 80
    with pytest.raises(ValueError, match="TEMPLATES"):
        ViLSegTextEncoder(tiny_cfg(MODEL__VILSEG__TEXT__TEMPLATES="nope"))


def test_class_embeddings_are_unit_norm_and_average_synonyms(encoder):
    emb = encoder.class_embeddings(["cat", "sky, clouds"])
    assert emb.shape == (2, 128)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        sky = F.normalize(encoder(["a photo of a sky."]), dim=-1)
        clouds = F.normalize(encoder(["a photo of a clouds."]), dim=-1)
    assert torch.allclose(emb[1], F.normalize(sky + clouds, dim=-1)[0], atol=1e-5)


def test_imagenet_ensemble_is_the_mean_over_80_templates():
    enc = ViLSegTextEncoder(tiny_cfg(MODEL__VILSEG__TEXT__TEMPLATES="imagenet")).eval()
    emb = enc.class_embeddings(["dog"])
    with torch.no_grad():
        each = F.normalize(enc([t("dog") for t in PROMPT_TEMPLATES["imagenet"]]), dim=-1)
    assert torch.allclose(emb[0], F.normalize(each.mean(0), dim=-1), atol=1e-5)


def test_cache_per_vocabulary_in_eval_and_dropped_on_train_and_load(encoder, monkeypatch):
    a = encoder.class_embeddings(["cat", "dog"])
    calls = []
    real_forward = encoder.forward
    monkeypatch.setattr(
        encoder, "forward", lambda texts: calls.append(len(texts)) or real_forward(texts)
    )
    assert encoder.class_embeddings(["cat", "dog"]) is a
    assert calls == []
    encoder.class_embeddings(["dog", "cat"])  # another vocabulary: computed
    assert calls == [2]
    encoder.train()
    encoder.eval()
    encoder.class_embeddings(["cat", "dog"])
    assert calls == [2, 2]
    encoder.load_state_dict(encoder.state_dict())
    encoder.class_embeddings(["cat", "dog"])
    assert calls == [2, 2, 2]


def test_empty_vocabulary_and_blank_class_are_clear_errors(encoder):
    with pytest.raises(ValueError, match="empty"):
        encoder.class_embeddings([])
    with pytest.raises(ValueError, match="blank"):
        encoder.class_embeddings(["cat", " , "])


def test_long_captions_are_truncated_not_errors(encoder):
    with torch.no_grad():
        out = encoder(["word " * 10000, ""])
    assert out.shape == (2, 128) and torch.isfinite(out).all()


def test_pretrained_open_clip_checkpoint_brings_both_towers_and_its_logit_scale(tmp_path):
    import math

    import open_clip
    from detectron2.modeling import build_model

    torch.manual_seed(1)
    clip = open_clip.create_model("ViLSeg-Tiny")
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(55.0))  # not the config's INIT_LOGIT_SCALE (40)
    path = tmp_path / "open_clip_tiny.pt"
    torch.save(clip.state_dict(), path)

    model = build_model(
        tiny_cfg(MODEL__OPEN_CLIP__PRETRAINED=str(path), MODEL__CLIP_VIT__CONV_STEM=False)
    )
    assert float(model.scale().detach()) == pytest.approx(55.0, rel=1e-6)
    torch.testing.assert_close(
        model.text_encoder.clip.token_embedding.weight, clip.token_embedding.weight
    )
    torch.testing.assert_close(model.backbone.visual.transformer.resblocks[0].mlp.c_fc.weight,
                               clip.visual.transformer.resblocks[0].mlp.c_fc.weight)  # fmt: skip
    # from scratch (the paper): the config's value
    assert float(build_model(tiny_cfg()).scale().detach()) == pytest.approx(40.0, rel=1e-6)
