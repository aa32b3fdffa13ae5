"""The one table from a config's ``type`` string to the class it builds.

``build_model(dict(type='ResNet3dSlowFast', ...))`` looks ``type`` up in :data:`MODEL_TYPES`, checks the other
keys against the class's keyword arguments (a misspelt key gets the closest match suggested) and calls the class
with them. Entries are ``"module:Class"`` strings so that importing :mod:`lateral` does not import every model;
the string also tells a reader which file to open.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from typing import Any

from lateral.config import ConfigError, check_keys, load_config, suggest

__all__ = ["MODEL_TYPES", "build_model", "lookup_type", "check_kwargs", "take_init_cfg", "apply_pretrained_init",
           "reapply_pretrained_inits"]

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

# mmengine ``init_cfg`` types that describe a random initialisation; lateral's modules initialise as mmaction2's
# own ``init_weights`` does, so these are reported and not applied
_INIT_SCHEMES = {"Kaiming", "Xavier", "Normal", "TruncNormal", "Uniform", "Constant", "Caffe2Xavier"}
_PRETRAINED_KEYS = {"type", "checkpoint", "prefix", "map_location"}

logger = logging.getLogger("lateral.registry")


def take_init_cfg(kwargs: dict[str, Any], target: Any, where: str) -> dict | None:
    """Pop mmengine's ``init_cfg`` from a model's keyword arguments and act on it.

    ``dict(type='Pretrained', checkpoint=PATH, prefix=...)`` becomes ``pretrained=PATH`` for a class that takes
    ``pretrained`` (the ResNet3d family, which inflates 2D files); for any other class it is returned, to be loaded
    into the built module with :func:`apply_pretrained_init`. Initialisation schemes (``Kaiming``, ``Normal``, ...)
    are logged as not applied. A list may mix both.

    Raises:
        ConfigError: an unknown ``init_cfg`` type or key, or both ``pretrained`` and a ``Pretrained`` init_cfg.
    """
    init_cfg = kwargs.pop("init_cfg", None)
    if init_cfg is None:
        return None
    entries = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    pending = None
    for entry in entries:
        if not isinstance(entry, dict) or "type" not in entry:
            raise ConfigError(f"{where}.init_cfg must be a dict with a 'type' (or a list of them), got {entry!r}")
        kind = entry["type"]
        if kind in _INIT_SCHEMES:
            logger.info("%s.init_cfg type '%s' is not applied: lateral initialises %s as mmaction2's init_weights "
                        "does", where, kind, where)
            continue
        if kind != "Pretrained":
            raise ConfigError(f"{where}.init_cfg: unknown type '{kind}'."
                              f"{suggest(kind, [*_INIT_SCHEMES, 'Pretrained'])}")
        check_keys(entry, sorted(_PRETRAINED_KEYS), f"{where}.init_cfg")
        if "checkpoint" not in entry:
            raise ConfigError(f"{where}.init_cfg: type 'Pretrained' needs a 'checkpoint' (a local file path)")
        takes_pretrained = "pretrained" in (_accepted_keys(target) or [])
        if takes_pretrained and entry.get("prefix") in (None, "backbone.", "backbone"):
            if kwargs.get("pretrained"):
                raise ConfigError(f"{where}: both pretrained={kwargs['pretrained']!r} and init_cfg "
                                  f"checkpoint={entry['checkpoint']!r} are set; keep one")
            kwargs["pretrained"] = entry["checkpoint"]
        else:
            pending = entry
    return pending


def apply_pretrained_init(module: Any, entry: dict, where: str) -> None:
    """Load an ``init_cfg=dict(type='Pretrained', ...)`` checkpoint into a built module (non-strict, as mmengine,
    but an error if nothing fits and a warning for what stays initialised).

    The entry stays on the module as ``pretrained_init``: a parent that re-initialises its children (a recognizer's
    ``init_weights``) loads it again afterwards, so the checkpoint is what the child ends up with.
    """
    from lateral.checkpoint import load_pretrained

    load_pretrained(module, entry["checkpoint"], f"{where}.init_cfg.checkpoint", prefix=entry.get("prefix"))
    module.pretrained_init = (entry, where)


def reapply_pretrained_inits(parent: Any) -> None:
    """Load again every ``init_cfg`` checkpoint held by a sub-module of ``parent`` (after ``parent`` re-initialised
    them)."""
    for child in parent.modules():
        if child is not parent and getattr(child, "pretrained_init", None) is not None:
            entry, where = child.pretrained_init
            apply_pretrained_init(child, entry, where)


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
    target = lookup_type(type_name)
    pending_init = take_init_cfg(kwargs, target, type_name)
    check_kwargs(target, kwargs, f"{type_name}")
    module = target(**kwargs)
    if pending_init is not None:
        apply_pretrained_init(module, pending_init, type_name)
    return module
