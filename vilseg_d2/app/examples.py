"""The page's examples: images of the synthetic validation world (rendered at start-up, the
images ``python -m vilseg_d2.data.synthetic`` writes to ``val/images/``) with vocabularies the
demo model knows, and vocabularies to start from."""

from __future__ import annotations

import os
from typing import List, Tuple

import cv2

from ..data.synthetic import CLASSES, validation_sample

__all__ = ["EXAMPLE_VOCABULARIES", "example_images"]

# Vocabularies to start from, in the vocabulary box's syntax: the synthetic world's shapes, some
# with synonyms; and one for a model trained on photos.
EXAMPLE_VOCABULARIES = (
    "; ".join(CLASSES),
    "star; heart; ring, donut; cross, plus sign",
    "red shape; green shape; blue shape; yellow shape",
    "cat, kitten; dog; sky, clouds; grass",
)


def example_images(folder: str, count: int = 3, seed: int = 0) -> List[Tuple[str, str]]:
    """(image file, vocabulary) examples: the first ``count`` validation images of the world of
    ``seed`` with two objects or more, written to ``folder`` as PNG, each with a vocabulary:
    every shape; the shapes it holds; the same with their colours, as the captions name them.

    Args:
        folder: where to write the images (created).
        count: how many examples (at most 3 vocabularies are cycled through).
        seed: the synthetic world's seed (0: the one ``make demo`` trains and evaluates on).

    Returns:
        ``count`` (path, vocabulary) pairs.
    """
    os.makedirs(folder, exist_ok=True)
    examples: List[Tuple[str, str]] = []
    index = 0
    while len(examples) < count:
        sample = validation_sample(index, seed)
        if len(sample.objects) >= 2:
            path = os.path.join(folder, f"synthetic_val_{index:06d}.png")
            cv2.imwrite(path, sample.image[:, :, ::-1])
            shapes = [o.cls for o in sample.objects]
            coloured = [f"{o.color} {o.cls}" for o in sample.objects]
            vocabularies = ("; ".join(CLASSES), "; ".join(shapes), "; ".join(coloured))
            examples.append((path, vocabularies[len(examples) % len(vocabularies)]))
        index += 1
    return examples
