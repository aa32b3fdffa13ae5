"""lateral: SlowFast video recognition and Feature Pyramid Network detection, built on lateral connections.

Public API::

    model = lateral.build_model("configs/recognition/slowfast/slowfast_r50_4x16x1_kinetics400.py")
    lateral.load_checkpoint(model, "slowfast_r50_4x16x1_256e_kinetics400_rgb.pth")
    probs = model.predict(clips)          # clips [N, V, 3, T, H, W] -> [N, num_classes]
    fast = lateral.optimize(model, precision="bf16")   # an inference copy (lateral.inference.optimize)

The names are imported on first use, so that ``import lateral`` (and with it the ``lateral`` command's
``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "build_model": "lateral.registry",
    "load_checkpoint": "lateral.checkpoint",
    "CheckpointError": "lateral.checkpoint",
    "load_config": "lateral.config",
    "ConfigError": "lateral.config",
    "optimize": "lateral.inference",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lateral' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
