"""The one table from a config's ``type`` string to the class it builds.

``build_model(dict(type='ResNet3dSlowFast', ...))`` looks ``type`` up in :data:`MODEL_TYPES`, checks the other
keys against the class's keyword arguments (a misspelt key gets the closest match suggested) and calls the class
with them. Entries are ``"module:Class"`` strings so that importing :mod:`lateral` does not import every model;
the string also tells a reader which file to open.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

from lateral.config import ConfigError, load_config, suggest

__all__ = ["MODEL_TYPES", "build_model", "lookup_type", "check_kwargs"]

MODEL_TYPES: dict[str, str] = {
    # recognizers
    "Recognizer3D": "lateral.models.recognizer:Recognizer3D",
    # 3D backbones
    "ResNet3d": "lateral.models.resnet3d:ResNet3d",
    "ResNet3dPathway": "lateral.models.slowfast:ResNet3dPathway",
    "resnet3d": "lateral.models.slowfast:ResNet3dPathway",  # mmaction2's pathway type name
    "ResNet3dSlowFast": "lateral.models.slowfast:ResNet3dSlowFast",
    "ResNet3dSlowOnly": "lateral.models.slowfast:ResNet3dSlowOnly",
    # heads and losses
    "SlowFastHead": "lateral.models.heads:SlowFastHead",
    "I3DHead": "lateral.models.heads:I3DHead",
    "CrossEntropyLoss": "lateral.models.heads:CrossEntropyLoss",
    "BCELossWithLogits": "lateral.models.heads:BCELossWithLogits",
    # detection
    "ResNetFPN": "lateral.models.fpn:ResNetFPN",
    "FasterRCNN": "lateral.models.detector:build_faster_rcnn",
}

# Config keys that mmaction2/mmengine accept on every model and that carry no architecture.
_IGNORED_KEYS = {"init_cfg"}


def lookup_type(type_name: str) -> Any:
    """Return the class (or builder function) registered under ``type_name``."""
    if not isinstance(type_name, str):
        raise ConfigError(f"'type' must be a string, got {type_name!r}")
    if type_name not in MODEL_TYPES:
        known = ", ".join(sorted(MODEL_TYPES))
        raise ConfigError(f"unknown model type '{type_name}'.{suggest(type_name, MODEL_TYPES)} Known types: {known}")
    module_name, attr = MODEL_TYPES[type_name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def _accepted_keys(target: Any) -> list[str] | None:
    """Keyword names ``target`` accepts; for a class whose ``__init__`` passes ``**kwargs`` to its parent, the
    parent's too. None if anything is accepted."""
    accepted: list[str] = []
    chain = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    for func in chain:
        params = inspect.signature(func).parameters
        for name, p in params.items():
            if name != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                if name not in accepted:
                    accepted.append(name)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return accepted
    return None


def _required_keys(target: Any) -> list[str]:
    """Keyword names ``target`` (a class: its own ``__init__``) needs: those without a default."""
    func = target.__init__ if inspect.isclass(target) else target
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name, p in inspect.signature(func).parameters.items()
            if name != "self" and p.kind in kinds and p.default is inspect.Parameter.empty]


def check_kwargs(target: Any, kwargs: dict[str, Any], where: str) -> None:
    """Raise a :class:`ConfigError` naming any key that ``target`` does not accept (with the closest match) or
    needs and does not get."""
    missing = [key for key in _required_keys(target) if key not in kwargs]
    if missing:
        raise ConfigError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(k) for k in missing)}")
    accepted = _accepted_keys(target)
    if accepted is None:
        return
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"{where}: unknown key '{key}'.{suggest(key, accepted)} Accepted keys: {', '.join(accepted)}"
            )


def build_model(cfg: dict | str | os.PathLike, **overrides: Any):
    """Build a model from an mmaction2-style dict or from a config file.

    Args:
        cfg: ``dict(type='Recognizer3D', backbone=..., cls_head=...)``, a bare backbone/head dict, or the path
            of a config file whose ``model`` entry is such a dict.
        overrides: keys that replace those of ``cfg`` at the top level.

    Returns:
        The ``nn.Module`` (or what the registered builder returns).
    """
    if isinstance(cfg, (str, os.PathLike)):
        file_cfg = load_config(cfg)
        if "model" not in file_cfg:
            raise ConfigError(f"{cfg}: the config file defines no 'model'")
        cfg = file_cfg["model"]
    if not isinstance(cfg, dict):
        raise ConfigError(f"a model config must be a dict with a 'type' key, got {type(cfg).__name__}")
    kwargs = dict(cfg)
    kwargs.update(overrides)
    if "type" not in kwargs:
        raise ConfigError(f"a model config needs a 'type' key; got keys {sorted(kwargs)}")
    type_name = kwargs.pop("type")
    for key in _IGNORED_KEYS:
        kwargs.pop(key, None)
    target = lookup_type(type_name)
    check_kwargs(target, kwargs, f"{type_name}")
    return target(**kwargs)
