"""Build open_clip models from a name and a pretrained spec, with clear offline errors."""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional
from urllib.parse import urlparse

import open_clip
import torch

from ..errors import MissingFileError

logger = logging.getLogger(__name__)

_HF_HOST = "huggingface.co"
_TRUE = ("1", "true", "yes", "on")


def _offline(host: str) -> bool:
    """Whether ``host`` cannot be reached: honours HF_HUB_OFFLINE, else a 3-second TCP probe."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return False
    except OSError:
        return True


def _cached_checkpoint(tag_cfg: dict, cache_dir: Optional[str]) -> Optional[str]:
    """The local file of an open_clip pretrained tag if a previous download left it cached."""
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        # open_clip's convention: "org/repo/filename", or "org/repo/" for its default file names.
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        for name in names:
            path = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir or None)
            if isinstance(path, str) and os.path.isfile(path):
                return path
    if tag_cfg.get("url"):
        path = os.path.join(
            cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(tag_cfg["url"])
        )
        if os.path.isfile(path):
            return path
    return None


def resolve_pretrained(
    model_name: str, pretrained: str, cache_dir: str = ""
) -> tuple[Optional[str], dict]:
    """Turn ``MODEL.OPEN_CLIP.PRETRAINED`` into a local checkpoint file.

    Args:
        model_name: an open_clip model name, e.g. "ViT-B-16".
        pretrained: "" (random init), an open_clip pretrained tag (e.g. "openai"), or a local path.
        cache_dir: open_clip's download cache ("" = its default).

    Returns:
        (path or None for random init, the tag's open_clip config or {}).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a tag open_clip does not know for this model.
        RuntimeError: a known tag that is not cached while the hub cannot be reached.
    """
    if not pretrained:
        return None, {}
    if os.path.isfile(pretrained):
        return pretrained, {}
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise MissingFileError(
                f"MODEL.OPEN_CLIP.PRETRAINED: checkpoint file {pretrained!r} does not exist."
            )
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"MODEL.OPEN_CLIP.PRETRAINED={pretrained!r} is neither a file nor an open_clip "
            f"pretrained tag of {model_name!r}. Known tags: {tags or 'none'}. "
            'Use "" for random init or a local checkpoint path.'
        )
    cached = _cached_checkpoint(tag_cfg, cache_dir)
    if cached:
        return cached, tag_cfg
    host = (
        _HF_HOST if tag_cfg.get("hf_hub") else urlparse(tag_cfg.get("url", "")).hostname or _HF_HOST
    )
    if _offline(host):
        raise RuntimeError(
            f"Cannot download the open_clip weights {model_name}/{pretrained}: no network "
            "(or HF_HUB_OFFLINE is set) and they are not cached. Download them on a machine with "
            f"network access (e.g. open_clip.create_model({model_name!r}, "
            f"pretrained={pretrained!r})) and pass the file instead: "
            "MODEL.OPEN_CLIP.PRETRAINED /path/to/checkpoint.bin (or set MODEL.OPEN_CLIP.CACHE_DIR "
            "to the cache). A file carries no tag: for weights trained with QuickGELU (OpenAI's) "
            "name the matching architecture, e.g. MODEL.OPEN_CLIP.MODEL_NAME ViT-B-16-quickgelu, "
            "or use the cache."
        )
    logger.info(f"Downloading open_clip weights {model_name}/{pretrained} ...")
    return open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir or None), tag_cfg


def create_open_clip_model(
    model_name: str, pretrained: str = "", cache_dir: str = ""
) -> torch.nn.Module:
    """Create an open_clip CLIP model on CPU, fp32, random init or with resolved weights.

    Args:
        model_name: open_clip model name, or one shipped in vilseg_d2/model_configs.
        pretrained: see :func:`resolve_pretrained`.
        cache_dir: open_clip's download cache.
    """
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"MODEL.OPEN_CLIP.MODEL_NAME={model_name!r} is not an open_clip model. "
            f"Known: {', '.join(open_clip.list_models())}"
        )
    path, tag_cfg = resolve_pretrained(model_name, pretrained, cache_dir)
    # Without pretrained weights open_clip warns "No pretrained weights loaded ... initialized
    # randomly": the paper's from-scratch setting, and a model whose trained weights
    # (MODEL.WEIGHTS) load afterwards. Said once, plainly, at debug level instead.
    quiet = _DropMessage("No pretrained weights loaded") if path is None else None
    root = logging.getLogger()
    if quiet:
        root.addFilter(quiet)
    try:
        model = open_clip.create_model(
            model_name,
            pretrained=path,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            cache_dir=cache_dir or None,
        )
    finally:
        if quiet:
            root.removeFilter(quiet)
    logger.debug(
        f"open_clip {model_name}: "
        + (f"weights {path}" if path else "no pretrained weights (MODEL.OPEN_CLIP.PRETRAINED)")
    )
    return model


class _DropMessage(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)
