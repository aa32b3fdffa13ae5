"""From a config's ``type`` string to the object it builds: one lookup, used by every table.

Each part of lateral keeps its own table as a plain dict from type name to class (or builder function):
==============================  ==========================================
:data:`MODEL_TYPES`             models (here)
``lateral.data.pipeline``       ``PIPELINE_STEPS``: recognition and detection pipeline steps
``lateral.data.datasets``       ``DATASET_TYPES``: video datasets
``lateral.data.blending``       ``BLENDING_TYPES``: mixup / cutmix
``lateral.engine.optim``        ``OPTIMIZERS``, ``SCHEDULERS``
==============================  ==========================================

and builds from it with :func:`build_from_table`, which strips mmengine scopes (``'mmaction.Resize'``,
``_scope_='mmdet'``), refuses an unknown type with the closest name, checks the other keys against the class's
keyword arguments (a misspelt key gets the closest match suggested, a missing required key is named) and calls the
class with them. ``build_model(dict(type='ResNet3dSlowFast', ...))`` is that over :data:`MODEL_TYPES`, whose
entries are ``"module:Class"`` strings so that importing :mod:`lateral` does not import every model; the string
also tells a reader which file to open.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from typing import Any

from lateral.checkpoint import load_pretrained
from lateral.config import ConfigError, check_keys, load_config, suggest

__all__ = [
    "MODEL_TYPES",
    "build_model",
    "build_from_table",
    "resolve_type",
    "strip_scope",
    "lookup_type",
    "check_kwargs",
    "take_init_cfg",
    "apply_pretrained_init",
    "reapply_pretrained_inits",
]

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
            logger.info(
                "%s.init_cfg type '%s' is not applied: lateral initialises %s as mmaction2's init_weights does",
                where,
                kind,
                where,
            )
            continue
        if kind != "Pretrained":
            raise ConfigError(
                f"{where}.init_cfg: unknown type '{kind}'.{suggest(kind, [*_INIT_SCHEMES, 'Pretrained'])}"
            )
        check_keys(entry, sorted(_PRETRAINED_KEYS), f"{where}.init_cfg")
        if "checkpoint" not in entry:
            raise ConfigError(f"{where}.init_cfg: type 'Pretrained' needs a 'checkpoint' (a local file path)")
        takes_pretrained = "pretrained" in (_accepted_keys(target) or [])
        if takes_pretrained and entry.get("prefix") in (None, "backbone.", "backbone"):
            if kwargs.get("pretrained"):
                raise ConfigError(
                    f"{where}: both pretrained={kwargs['pretrained']!r} and init_cfg "
                    f"checkpoint={entry['checkpoint']!r} are set; keep one"
                )
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

    load_pretrained(module, entry["checkpoint"], f"{where}.init_cfg.checkpoint", prefix=entry.get("prefix"))
    module.pretrained_init = (entry, where)


def reapply_pretrained_inits(parent: Any) -> None:
    """Load again every ``init_cfg`` checkpoint held by a sub-module of ``parent`` (after ``parent`` re-initialised
    them)."""
    for child in parent.modules():
        if child is not parent and getattr(child, "pretrained_init", None) is not None:
            entry, where = child.pretrained_init
            apply_pretrained_init(child, entry, where)


# OpenMMLab registry scopes a type may be prefixed with ('mmaction.Resize') or a dict may name in ``_scope_``;
# lateral has one table per kind of object, so the scope only has to be one it reads configs of
MM_SCOPES = ("mmaction", "mmdet", "mmengine", "mmcv", "mmpretrain", "mmcls")


def strip_scope(type_name: Any, where: str) -> str:
    """``'mmaction.Resize'`` -> ``'Resize'`` (mmengine's ``scope.Type``); a name without a scope is returned as is.

    Raises:
        ConfigError: ``type_name`` is not a string, or its scope is not an OpenMMLab one lateral reads.
    """
    if not isinstance(type_name, str):
        raise ConfigError(f"{where}: 'type' must be a string, got {type_name!r}")
    scope, dot, name = type_name.partition(".")
    if not dot:
        return type_name
    if scope not in MM_SCOPES:
        raise ConfigError(
            f"{where}: type '{type_name}' has the scope '{scope}'.{suggest(scope, MM_SCOPES)} "
            f"lateral reads the scopes {', '.join(MM_SCOPES)}"
        )
    return name


def _resolve_entry(entry: Any) -> Any:
    if isinstance(entry, str):  # "module:attr", imported on first use
        module_name, attr = entry.split(":")
        return getattr(importlib.import_module(module_name), attr)
    return entry


def resolve_type(table: dict[str, Any], cfg: dict, where: str) -> tuple[str, Any, dict[str, Any]]:
    """Look ``cfg['type']`` up in ``table``.

    Args:
        table: type name -> class, builder function or ``"module:attr"`` string.
        cfg: the config dict; it is not changed.
        where: where ``cfg`` sits in the config (``'train_dataloader.dataset.pipeline[3]'``), for messages.

    Returns:
        (type name without its scope, the class or function, the other keys of ``cfg`` without ``_scope_``).

    Raises:
        ConfigError: ``cfg`` is not a dict with a ``type``, or the type is unknown (the closest name is suggested
            and the known ones listed).
    """
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"{where}: expected a dict with a 'type' key, got {cfg!r}")
    kwargs = dict(cfg)
    type_name = strip_scope(kwargs.pop("type"), where)
    scope = kwargs.pop("_scope_", None)
    if scope is not None and scope not in MM_SCOPES:
        raise ConfigError(
            f"{where}: _scope_='{scope}' is not an OpenMMLab scope lateral reads "
            f"({', '.join(MM_SCOPES)}).{suggest(str(scope), MM_SCOPES)}"
        )
    if type_name not in table:
        raise ConfigError(
            f"{where}: unknown type '{type_name}'.{suggest(type_name, table)} Known types: {', '.join(sorted(table))}"
        )
    return type_name, _resolve_entry(table[type_name]), kwargs


def build_from_table(table: dict[str, Any], cfg: dict, where: str, **defaults: Any) -> Any:
    """Build ``cfg`` with the class ``table`` registers under its ``type``.

    ``build_from_table(PIPELINE_STEPS, dict(type='mmaction.Resize', scale=(-1, 256)), 'test_pipeline[2]')`` is
    ``Resize(scale=(-1, 256))``.

    Args:
        table: type name -> class, builder function or ``"module:attr"`` string.
        cfg: ``dict(type=..., **keyword arguments)``; it is not changed.
        where: where ``cfg`` sits in the config, for messages; key errors name it with the type, e.g.
            ``train_dataloader.dataset.pipeline[3] (Resize): unknown key 'scael'. Did you mean 'scale'?``.
        defaults: keyword arguments for keys ``cfg`` does not set (e.g. an optimizer's ``params``).

    Raises:
        ConfigError: see :func:`resolve_type` and :func:`check_kwargs`.
    """
    type_name, target, kwargs = resolve_type(table, cfg, where)
    kwargs = {**defaults, **kwargs}
    check_kwargs(target, kwargs, f"{where} ({type_name})")
    return target(**kwargs)


def lookup_type(type_name: str) -> Any:
    """Return the model class (or builder function) registered under ``type_name`` in :data:`MODEL_TYPES`."""
    return resolve_type(MODEL_TYPES, {"type": type_name}, "model")[1]


def _accepted_keys(target: Any) -> list[str] | None:
    """Keyword names ``target`` accepts; for a class whose ``__init__`` passes ``**kwargs`` to its parent, the
    parent's too. None if anything is accepted."""
    accepted: list[str] = []
    chain = (
        [vars(c)["__init__"] for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    )
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
    return [
        name
        for name, p in inspect.signature(func).parameters.items()
        if name != "self" and p.kind in kinds and p.default is inspect.Parameter.empty
    ]


def check_kwargs(target: Any, kwargs: dict[str, Any], where: str) -> None:
    """Raise a :class:`ConfigError` naming any key that ``target`` does not accept (with the closest match) or
    needs and does not get; unknown keys first, as a misspelt required key is both."""
    accepted = _accepted_keys(target)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                raise ConfigError(
                    f"{where}: unknown key '{key}'.{suggest(str(key), accepted)} Accepted keys: {', '.join(accepted)}"
                )
    missing = [key for key in _required_keys(target) if key not in kwargs]
    if missing:
        raise ConfigError(
            f"{where}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}"
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
    type_name, target, kwargs = resolve_type(MODEL_TYPES, {**cfg, **overrides}, "model")
    pending_init = take_init_cfg(kwargs, target, type_name)
    check_kwargs(target, kwargs, f"model ({type_name})")
    module = target(**kwargs)
    if pending_init is not None:
        apply_pretrained_init(module, pending_init, type_name)
    return module
