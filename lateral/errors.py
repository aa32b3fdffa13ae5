"""The base class of the errors lateral raises for a user's mistake. A leaf: it imports nothing of lateral."""

from __future__ import annotations

__all__ = ["LateralError"]


class LateralError(Exception):
    """A user error: its message names what was wrong and what was expected; the CLI prints it as one line,
    without a traceback."""
