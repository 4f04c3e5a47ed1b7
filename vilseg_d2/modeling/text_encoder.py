"""The text side: open_clip's text tower and tokenizer, prompt templates, a vocabulary cache."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Dict, List, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn

from .open_clip_model import create_open_clip_model

__all__ = ["ViLSegTextEncoder", "PROMPT_TEMPLATES", "duplicate_classes", "parse_vocabulary"]

logger = logging.getLogger(__name__)

PROMPT_TEMPLATES: Dict[str, Tuple[Callable[[str], str], ...]] = {
    # The paper's prompt (as CLIP): "a photo of a {}."
    "single": (lambda c: f"a photo of a {c}.",),
    # CLIP's 80-template ImageNet ensemble, as shipped by open_clip.
    "imagenet": tuple(OPENAI_IMAGENET_TEMPLATES),
}


def parse_vocabulary(text: str) -> List[str]:
    """``"cat; dog; sky, clouds"`` -> ``["cat", "dog", "sky, clouds"]`` (';' or newline separated).

    Within one class, ',' separates synonyms, which :class:`ViLSegTextEncoder` averages.
    """
    classes = [c.strip() for part in text.split("\n") for c in part.split(";")]
    return [c for c in classes if c]


def duplicate_classes(class_names: Sequence[str]) -> List[str]:
    """The names of a vocabulary that name the same class as another one (case and spacing
    ignored, as the tokenizer does), sorted."""

    def fold(name: str) -> str:
        return " ".join(name.lower().split())

    counts = Counter(fold(n) for n in class_names)
    return sorted({n for n in class_names if counts[fold(n)] > 1})


class ViLSegTextEncoder(nn.Module):
    """open_clip text tower + tokenizer.

    ``forward(captions)`` embeds free text (training). ``class_embeddings(names)`` embeds a
    vocabulary through prompt templates, averaging over templates and comma-separated synonyms,
    and caches the result per (vocabulary, templates) while the module is in eval mode: text
    features are never recomputed per image. The cache is dropped by ``train()`` and by
    loading weights.
    """

    PROMPT_BATCH = 1024  # prompts per text-tower forward when embedding a vocabulary

    @configurable
    def __init__(
        self,
        *,
        clip: nn.Module,
        tokenizer: Callable,
        templates: str = "single",
        freeze: bool = False,
    ):
        """
        Args:
            clip: an open_clip CLIP model; its visual tower and logit scale are dropped (the
                logit scale's value stays readable as :attr:`clip_logit_scale`).
            tokenizer: the matching open_clip tokenizer (``open_clip.get_tokenizer(name)``).
            templates: a key of :data:`PROMPT_TEMPLATES`.
            freeze: no gradients for the text tower.
        """
        super().__init__()
        if templates not in PROMPT_TEMPLATES:
            raise ValueError(
                f"MODEL.VILSEG.TEXT.TEMPLATES must be one of {sorted(PROMPT_TEMPLATES)}, "
                f"got {templates!r}."
            )
        scale = getattr(clip, "logit_scale", None)
        # exp of the tower's learnt logit scale (what a pretrained checkpoint brings), or None
        self.clip_logit_scale = (
            float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else None
        )
        for name in ("visual", "logit_scale", "logit_bias"):
            if hasattr(clip, name):
                delattr(clip, name)
        self.clip = clip
        self.tokenizer = tokenizer
        self.templates = templates
        self._cache: Dict[Tuple[Tuple[str, ...], str], torch.Tensor] = {}
        if freeze:
            for p in self.parameters():
                p.requires_grad_(False)
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_cache())

    @classmethod
    def from_config(cls, cfg):
        name = cfg.MODEL.OPEN_CLIP.MODEL_NAME
        return {
            "clip": create_open_clip_model(
                name, cfg.MODEL.OPEN_CLIP.PRETRAINED, cfg.MODEL.OPEN_CLIP.CACHE_DIR
            ),
            "tokenizer": open_clip.get_tokenizer(name),
            "templates": cfg.MODEL.VILSEG.TEXT.TEMPLATES,
            "freeze": cfg.MODEL.VILSEG.TEXT.FREEZE,
        }

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def clear_cache(self) -> None:
        self._cache.clear()

    def train(self, mode: bool = True):
        self.clear_cache()
        return super().train(mode)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed free text (captions; longer ones are truncated to the context length).

        Args:
            texts: N strings.

        Returns:
            N x D unnormalised text embeddings.
        """
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.clip.encode_text(tokens)

    def class_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings of a vocabulary, cached in eval mode.

        Args:
            class_names: K class names; "a, b" in one name are synonyms.

        Returns:
            K x D tensor, rows of unit norm.

        Raises:
            ValueError: an empty vocabulary, a blank class, or a class named twice (ignoring
                case and spacing).
        """
        names = tuple(class_names)
        if not names:
            raise ValueError("The vocabulary is empty: give at least one class name.")
        key = (names, self.templates)
        if not self.training and key in self._cache:
            return self._cache[key]
        duplicates = duplicate_classes(names)
        if duplicates:
            raise ValueError(
                f"The vocabulary names these classes more than once: {duplicates}. Give each class "
                f"once; synonyms of one class go in one name, separated by commas ('cat, kitten')."
            )
        templates = PROMPT_TEMPLATES[self.templates]
        prompts: List[str] = []
        owner: List[int] = []
        for k, name in enumerate(names):
            synonyms = [s.strip() for s in name.split(",") if s.strip()]
            if not synonyms:
                raise ValueError(f"Class {k} of the vocabulary is blank: {name!r}.")
            for syn in synonyms:
                prompts.extend(t(syn) for t in templates)
                owner.extend([k] * len(templates))
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            chunks = [
                prompts[i : i + self.PROMPT_BATCH]
                for i in range(0, len(prompts), self.PROMPT_BATCH)
            ]
            emb = F.normalize(torch.cat([self.forward(c).float() for c in chunks]), dim=-1)  # P x D
        index = torch.tensor(owner, device=emb.device)
        summed = torch.zeros(len(names), emb.shape[1], device=emb.device).index_add_(0, index, emb)
        out = F.normalize(summed, dim=-1)
        if not self.training:
            self._cache[key] = out
        return out
