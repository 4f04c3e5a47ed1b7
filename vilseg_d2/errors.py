"""Mistakes of a user's, told as one message: :class:`UserError` and the ``__main__`` wrapper of
the command-line tools, :func:`run_tool`.

A user's mistake (a missing file, CUDA asked for on a machine without it, a bad vocabulary or
config key) raises a :class:`UserError` whose message says what to fix; the tools print that
message alone and exit with status 1. Any other exception is a bug, and keeps its traceback.
The errors that existed before this type keep their old base classes too (e.g.
:class:`~vilseg_d2.config.CudaUnavailableError` is also a ``RuntimeError``), so callers catching
those still do.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

__all__ = ["MissingFileError", "UserError", "run_tool"]

EXIT_USER_ERROR = 1


class UserError(Exception):
    """A mistake of the user's: the message says what is wrong and what to do. Printed alone,
    without a traceback, by :func:`run_tool` (and shown as a message by the web demo)."""

    def __str__(self) -> str:
        # One message whatever the other base class (a KeyError would print its repr).
        return str(self.args[0]) if self.args else ""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named, or was to make first, is missing: the message says which,
    and how to make it."""


def run_tool(main: Callable[..., Any], *args: Any, prog: Optional[str] = None) -> Any:
    """Run a tool's ``main(*args)`` as its ``__main__`` does: a :class:`UserError` becomes its
    message on stderr and exit status 1; any other exception propagates with its traceback.

    Args:
        main: the tool's entry point.
        args: its arguments.
        prog: the name the message starts with (default: the script's file name).

    Returns:
        What ``main`` returns.

    Raises:
        SystemExit: status 1, after a :class:`UserError`.
    """
    try:
        return main(*args)
    except UserError as e:
        name = prog or os.path.basename(sys.argv[0]) or "vilseg_d2"
        print(f"{name}: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
