"""The vocabulary of a command-line tool (``--vocabulary`` / ``--vocabulary-file``), read as
``tools/demo.py`` and ``tools/export_model.py`` read it: errors say what to fix."""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from ..modeling.text_encoder import duplicate_classes, parse_vocabulary
from ..modeling.vocabulary import BACKGROUND

__all__ = ["add_background_class", "add_vocabulary_arguments", "load_vocabulary"]


def add_vocabulary_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--vocabulary "cat; dog; sky, clouds"`` or ``--vocabulary-file FILE`` (one of them)."""
    vocab = parser.add_mutually_exclusive_group(required=required)
    vocab.add_argument(
        "--vocabulary", help='classes separated by ";", e.g. "cat; dog; sky, clouds"'
    )
    vocab.add_argument("--vocabulary-file", help="UTF-8 text file, one class per line")


def load_vocabulary(args: argparse.Namespace) -> Optional[List[str]]:
    """The class names of ``args.vocabulary`` or ``args.vocabulary_file`` (None if neither is
    given). Within a class, commas separate synonyms.

    Raises:
        SystemExit: saying what to fix: an unreadable or non-UTF-8 file, an empty vocabulary, a
            class named twice.
    """
    if args.vocabulary is not None:
        text = args.vocabulary
    elif args.vocabulary_file is not None:
        try:
            with open(args.vocabulary_file, encoding="utf-8-sig") as f:  # a BOM is dropped
                text = f.read()
        except UnicodeDecodeError as e:
            raise SystemExit(
                f"--vocabulary-file {args.vocabulary_file} is not UTF-8 text ({e}); "
                "save it as UTF-8."
            )
        except OSError as e:
            raise SystemExit(f"Cannot read --vocabulary-file: {e}")
    else:
        return None
    classes = parse_vocabulary(text)
    if not classes:
        raise SystemExit(
            "The vocabulary is empty: give at least one class name, e.g. --vocabulary 'cat; dog'."
        )
    duplicates = duplicate_classes(classes)
    if duplicates:
        raise SystemExit(
            f"The vocabulary names these classes more than once: {duplicates}. "
            "Give each class once; synonyms of one class go in one name, separated by commas "
            "('cat, kitten')."
        )
    return classes


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
    rules = cfg.MODEL.VILSEG.BG_THRESHOLD > 0 or cfg.MODEL.VILSEG.BG_GLOBAL_SIMILARITY > 0
    if not rules or BACKGROUND in (c.strip().lower() for c in vocabulary):
        return vocabulary
    if logger is not None:
        logger.info(
            "The background rules are on (MODEL.VILSEG.BG_THRESHOLD "
            f"{cfg.MODEL.VILSEG.BG_THRESHOLD}, BG_GLOBAL_SIMILARITY "
            f"{cfg.MODEL.VILSEG.BG_GLOBAL_SIMILARITY}): added the class {BACKGROUND!r} for the "
            "pixels they assign."
        )
    return [BACKGROUND] + vocabulary
