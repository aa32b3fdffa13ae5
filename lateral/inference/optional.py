"""Optional dependencies (onnx, onnxruntime, OpenVINO): imported when first needed, with the pip extra to install.

A leaf: nothing of lateral is imported here.
"""

from __future__ import annotations

import importlib
from typing import Any

from lateral.errors import LateralError

__all__ = ["MissingDependencyError", "require"]


class MissingDependencyError(LateralError, ImportError):
    """An optional runtime (onnxruntime, OpenVINO) is not installed; the message names the extra to install."""


def require(module_name: str, extra: str) -> Any:
    """Import an optional dependency or raise :class:`MissingDependencyError` naming the pip extra."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise MissingDependencyError(
            f"{module_name} is not installed; install the optional extra: pip install 'lateral-vision[{extra}]'"
        ) from None
