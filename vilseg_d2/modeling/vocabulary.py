"""The vocabulary of an inference input, and the background class the background rules assign."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..data.datasets.register_sem_seg import class_prompts

__all__ = [
    "BACKGROUND",
    "background_index",
    "dataset_vocabulary",
    "input_vocabulary",
    "to_vocabulary_order",
]

# The class the background rules assign (MODEL.VILSEG.BG_THRESHOLD, BG_GLOBAL_SIMILARITY): a class
# of the vocabulary with this name, wherever it stands; the other classes are matched by text.
BACKGROUND = "background"


def dataset_vocabulary(dataset_name: str) -> List[str]:
    """A registered dataset's classes as the text encoder should read them (their
    ``prompt_names``, e.g. "concrete wall" for "wall-concrete").

    Raises:
        DatasetNotRegisteredError, ValueError: ``dataset_name`` is not registered (the message
            lists close names), or has no ``stuff_classes`` (see
            :func:`~vilseg_d2.data.datasets.register_sem_seg.require_sem_seg_dataset`).
    """
    return list(class_prompts(dataset_name).values())


def input_vocabulary(x: Dict, default: Optional[Sequence[str]]) -> List[str]:
    """An inference input's class names: its ``vocabulary``, its ``dataset_name``'s classes, or
    ``default``; a ``ValueError`` saying what to give when there are none."""
    if x.get("vocabulary"):
        return list(x["vocabulary"])
    if x.get("dataset_name"):
        return dataset_vocabulary(x["dataset_name"])
    if default:
        return list(default)
    raise ValueError(
        "No vocabulary: give the input a 'vocabulary' list, a 'dataset_name' with "
        "stuff_classes, or call model.set_vocabulary([...]) / set DATASETS.TEST."
    )


def background_index(vocabulary: Sequence[str], segmenter) -> Optional[int]:
    """The position of the class named "background", which the background rules assign.

    Args:
        vocabulary: class names.
        segmenter: a :class:`~vilseg_d2.modeling.segmenter.ViLSegSegmenter`, whose rules decide.

    Returns:
        None with the rules off (every class is then matched by its text), else the index.

    Raises:
        ValueError: the rules are on and no class is named "background".
    """
    if not segmenter.has_background:
        return None
    names = [c.strip().lower() for c in vocabulary]
    if BACKGROUND not in names:
        rules = (
            f"BG_THRESHOLD {segmenter.bg_threshold}, "
            f"BG_GLOBAL_SIMILARITY {segmenter.bg_global_similarity}"
        )
        raise ValueError(
            f"The background rules are on ({rules}) but the vocabulary {list(vocabulary)} names "
            f"no {BACKGROUND!r} class, which they would assign. Add {BACKGROUND!r} to the "
            "vocabulary, or set both to 0 to match every class by text."
        )
    return names.index(BACKGROUND)


def to_vocabulary_order(scores: torch.Tensor, background: Optional[int]) -> torch.Tensor:
    """K x ... scores with the background first (as the segmenter writes them) -> the
    vocabulary's order, the background at ``background`` (no copy when it is first)."""
    if not background:
        return scores
    order = list(range(1, background + 1)) + [0] + list(range(background + 1, len(scores)))
    return scores[order]
