"""lateral: SlowFast video recognition and Feature Pyramid Network detection, built on lateral connections.

Public API::

    model = lateral.build_model("configs/recognition/slowfast/slowfast_r50_4x16x1_kinetics400.py")
    lateral.load_checkpoint(model, "slowfast_r50_4x16x1_256e_kinetics400_rgb.pth")
    probs = model.predict(clips)          # clips [N, V, 3, T, H, W] -> [N, num_classes]
"""

from lateral.checkpoint import CheckpointError, load_checkpoint
from lateral.config import ConfigError, load_config
from lateral.registry import build_model

__version__ = "0.1.0"


def optimize(model, precision: str = "fp32", compile: bool = False, **kwargs):
    """Return an inference copy of ``model`` (BN folded, channels-last, optional bf16 / torch.compile).

    See :func:`lateral.export.optimize` (``on_unsupported=`` says what to do where the CPU has no bf16); the
    original model is left untouched.
    """
    from lateral.export import optimize as _optimize

    return _optimize(model, precision=precision, compile=compile, **kwargs)


__all__ = ["build_model", "load_checkpoint", "load_config", "optimize", "CheckpointError", "ConfigError"]
