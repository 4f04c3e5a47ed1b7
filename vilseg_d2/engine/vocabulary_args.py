"""The vocabulary of a command-line tool (``--vocabulary`` / ``--vocabulary-file``), read as
``tools/demo.py``, ``tools/export_model.py`` and the web demo read it: errors
(:class:`VocabularyError`, a :class:`~vilseg_d2.errors.UserError`) say what to fix."""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from ..errors import UserError
from ..modeling.text_encoder import duplicate_classes, parse_vocabulary
from ..modeling.vocabulary import BACKGROUND

__all__ = [
    "VocabularyError",
    "add_background_class",
    "add_vocabulary_arguments",
    "load_vocabulary",
    "needs_background_class",
    "vocabulary_from_text",
]


class VocabularyError(UserError, ValueError):
    """A vocabulary that cannot be segmented with (empty, a class named twice, an unreadable
    file); the message says what to fix."""


def add_vocabulary_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--vocabulary "cat; dog; sky, clouds"`` or ``--vocabulary-file FILE`` (one of them)."""
    vocab = parser.add_mutually_exclusive_group(required=required)
    vocab.add_argument(
        "--vocabulary", help='classes separated by ";", e.g. "cat; dog; sky, clouds"'
    )
    vocab.add_argument("--vocabulary-file", help="UTF-8 text file, one class per line")


def vocabulary_from_text(text: str) -> List[str]:
    """The class names of a vocabulary text: ';' (or a new line) between classes, ',' between
    the synonyms of one class (``"cat; dog; sky, clouds"`` -> ``["cat", "dog", "sky, clouds"]``).

    Raises:
        VocabularyError: an empty vocabulary, a class of commas alone, a class named twice (case
            and spacing ignored).
    """
    classes = parse_vocabulary(text)
    if not classes:
        raise VocabularyError(
            "The vocabulary is empty: give at least one class name, e.g. 'cat; dog' (';' between "
            "classes, ',' between the synonyms of one class)."
        )
    blank = [c for c in classes if not c.replace(",", "").strip()]
    if blank:
        raise VocabularyError(
            f"The vocabulary has classes without a name: {blank}. Give each class a name; "
            "commas separate the synonyms of one class ('cat, kitten')."
        )
    duplicates = duplicate_classes(classes)
    if duplicates:
        raise VocabularyError(
            f"The vocabulary names these classes more than once: {duplicates}. "
            "Give each class once; synonyms of one class go in one name, separated by commas "
            "('cat, kitten')."
        )
    return classes


def load_vocabulary(args: argparse.Namespace) -> Optional[List[str]]:
    """The class names of ``args.vocabulary`` or ``args.vocabulary_file`` (None if neither is
    given), read by :func:`vocabulary_from_text`.

    Raises:
        VocabularyError: saying what to fix: an unreadable or non-UTF-8 file, an empty
            vocabulary, a class named twice.
    """
    if args.vocabulary is not None:
        text = args.vocabulary
    elif args.vocabulary_file is not None:
        try:
            with open(args.vocabulary_file, encoding="utf-8-sig") as f:  # a BOM is dropped
                text = f.read()
        except UnicodeDecodeError as e:
            raise VocabularyError(
                f"--vocabulary-file {args.vocabulary_file} is not UTF-8 text ({e}); "
                "save it as UTF-8."
            ) from None
        except OSError as e:
            raise VocabularyError(f"Cannot read --vocabulary-file: {e}") from None
    else:
        return None
    return vocabulary_from_text(text)


def needs_background_class(
    vocabulary: List[str], *, bg_threshold: float, bg_global_similarity: float
) -> bool:
    """Whether the background rules (``MODEL.VILSEG.BG_THRESHOLD`` / ``BG_GLOBAL_SIMILARITY``)
    are on and the vocabulary names no "background" class for the pixels they assign."""
    rules = bg_threshold > 0 or bg_global_similarity > 0
    return rules and BACKGROUND not in (c.strip().lower() for c in vocabulary)


def add_background_class(
    vocabulary: List[str], cfg, logger: Optional[logging.Logger] = None
) -> List[str]:
    """The vocabulary, with a "background" class first when the config's background rules are on
    and it names none (the rules assign that class; they never take over a named one).

    Args:
        vocabulary: class names.
        cfg: a ViL-Seg config (``MODEL.VILSEG.BG_THRESHOLD`` / ``BG_GLOBAL_SIMILARITY``).
        logger: says so when the class is added.
    """
    rules = cfg.MODEL.VILSEG
    if not needs_background_class(
        vocabulary, bg_threshold=rules.BG_THRESHOLD, bg_global_similarity=rules.BG_GLOBAL_SIMILARITY
    ):
        return vocabulary
    if logger is not None:
        logger.info(
            "The background rules are on (MODEL.VILSEG.BG_THRESHOLD "
            f"{cfg.MODEL.VILSEG.BG_THRESHOLD}, BG_GLOBAL_SIMILARITY "
            f"{cfg.MODEL.VILSEG.BG_GLOBAL_SIMILARITY}): added the class {BACKGROUND!r} for the "
            "pixels they assign."
        )
    return [BACKGROUND] + vocabulary
