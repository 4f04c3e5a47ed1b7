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

from .attention import set_attention_kernel
from .open_clip_model import create_open_clip_model

__all__ = [
    "ViLSegTextEncoder",
    "PROMPT_TEMPLATES",
    "check_caption_lengths",
    "duplicate_classes",
    "parse_vocabulary",
]

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


def check_caption_lengths(
    captions: Sequence[str], tokenizer: Callable, context_length: int, source: str = ""
) -> int:
    """Raise unless every caption fits the text tower's context with its start and end tokens
    (the tokenizer would cut a longer one silently). Returns the longest caption's token count.

    Args:
        captions: the texts, e.g. all captions of a training set.
        tokenizer: an open_clip tokenizer.
        context_length: the tower's context (``model.context_length``).
        source: where the captions come from, for the message.

    Raises:
        ValueError: naming the longest caption, its length and the context.
    """
    if not captions:
        return 0
    longest, length = "", 0
    for start in range(0, len(captions), 4096):
        chunk = list(captions[start : start + 4096])
        # Tokenised with room to spare, so that a caption that is too long shows its length.
        counts = (tokenizer(chunk, context_length=context_length + 64) != 0).sum(dim=1)
        i = int(counts.argmax())
        if int(counts[i]) > length:
            longest, length = chunk[i], int(counts[i])
    if length > context_length:
        raise ValueError(
            f"A caption{' of ' + source if source else ''} has {length} tokens, more than the text "
            f"tower's context of {context_length}, and would be cut: {longest!r}. Use a model "
            f"with a longer context (text_cfg.context_length) or shorter captions."
        )
    return length


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
        attention: str = "auto",
        trim_padding: bool = True,
    ):
        """
        Args:
            clip: an open_clip CLIP model; its visual tower and logit scale are dropped (the
                logit scale's value stays readable as :attr:`clip_logit_scale`).
            tokenizer: the matching open_clip tokenizer (``open_clip.get_tokenizer(name)``).
            templates: a key of :data:`PROMPT_TEMPLATES`.
            freeze: no gradients for the text tower.
            attention: the attention kernel of the tower, one of
                :data:`~vilseg_d2.modeling.attention.ATTENTION_KERNELS`.
            trim_padding: run the tower on the batch's longest text, not the whole context, where
                that gives the same embeddings (:attr:`trims_padding`).
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
        set_attention_kernel(clip, attention)
        self.tokenizer = tokenizer
        self.trim_padding = trim_padding
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
            "attention": cfg.MODEL.OPEN_CLIP.ATTENTION,
            "trim_padding": cfg.MODEL.VILSEG.TEXT.TRIM_PADDING,
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
        if not self.trims_padding:
            return self.clip.encode_text(tokens)
        return self._encode_trimmed(tokens)

    @property
    def trims_padding(self) -> bool:
        """Whether :meth:`forward` runs the tower on the batch's longest text only, not on the
        whole context: an open_clip ``CLIP`` with its causal mask, pooled at the end-of-text token
        (argmax), and a tokenizer padding with 0. Nothing after that token reaches it through the
        causal mask, so the embeddings are the same (to float rounding) at a fraction of the cost
        (captions of the synthetic world: at most 21 of the tiny model's 32 tokens)."""
        clip = self.clip
        return (
            self.trim_padding
            and type(clip).encode_text is open_clip.model.CLIP.encode_text
            and getattr(clip, "text_pool_type", None) == "argmax"
            and getattr(clip, "attn_mask", None) is not None
            and isinstance(self.tokenizer, open_clip.tokenizer.SimpleTokenizer)
        )

    def _encode_trimmed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``CLIP.encode_text`` on ``tokens`` (N x context) cut after the last column that holds
        a token of any row: N x D."""
        clip = self.clip
        used = (tokens != 0).any(dim=0).nonzero()
        n = int(used.max()) + 1 if used.numel() else 1
        tokens = tokens[:, :n]
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast_dtype) + clip.positional_embedding[:n].to(
            cast_dtype
        )
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:n, :n]))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # end of text
        proj = clip.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

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
