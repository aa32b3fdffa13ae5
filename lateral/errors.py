"""The base classes of the errors lateral raises for a user's mistake. A leaf: it imports nothing of lateral.

The ``lateral`` command prints a :class:`LateralError` as one line (its message names what was wrong, where, and
what was expected) and any other exception with its traceback, since that is a bug in lateral.
"""

from __future__ import annotations

__all__ = ["LateralError", "InputError"]


class LateralError(Exception):
    """A user error: its message names what was wrong and what was expected; the CLI prints it as one line,
    without a traceback."""


class InputError(LateralError, ValueError):
    """A value the user gave (an argument, a file's contents, a tensor's shape) is not what lateral expects.

    A ValueError too, so that callers who caught ValueError before keep working."""
