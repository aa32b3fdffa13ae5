"""Inference and export front end: :func:`optimize`, and the ``lateral export`` / ``lateral bench`` commands."""

from __future__ import annotations

from lateral.inference.optimize import optimize

__all__ = ["optimize"]
