"""Checks that the settings read from a config are usable, with errors that name the key and what was expected.

The engines and model builders call these on the plain dicts :func:`lateral.config.load_config` returns.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from lateral.errors import LateralError

__all__ = [
    "ConfigError",
    "suggest",
    "check_keys",
    "check_top_level",
    "positive_int_setting",
    "positive_number_setting",
    "check_bool_flags",
    "KNOWN_TOP_LEVEL_KEYS",
]


class ConfigError(LateralError, ValueError):
    """A config file or config dict that cannot be used, with the place and the reason.

    Also a ValueError, which callers written before :class:`LateralError` existed catch.
    """


def suggest(name: str, candidates: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def check_keys(section: Any, accepted: Iterable[str], where: str) -> dict:
    """Return ``section`` (a dict, or {} for None) after checking that every key is in ``accepted``.

    Raises:
        ConfigError: naming the first unknown key, the closest accepted one and the full list, e.g.
            ``train_cfg: unknown key 'max_epoch'. Did you mean 'max_epochs'? Accepted keys: ...``.
    """
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a dict, got {type(section).__name__}: {section!r}")
    accepted = list(accepted)
    for key in section:
        if key not in accepted:
            raise ConfigError(
                f"{where}: unknown key '{key}'.{suggest(str(key), accepted)} Accepted keys: {', '.join(accepted)}"
            )
    return section


# Top-level names that mmaction2 / mmengine configs and lateral's engines use. Config files may define other
# names freely (``data_root = ...``); ``--cfg-options`` may add one only if it is not a near-miss of these.
KNOWN_TOP_LEVEL_KEYS = (
    "model",
    "train_dataloader",
    "val_dataloader",
    "test_dataloader",
    "train_cfg",
    "val_cfg",
    "test_cfg",
    "optim_wrapper",
    "param_scheduler",
    "default_hooks",
    "randomness",
    "load_from",
    "resume",
    "work_dir",
    "train_pipeline",
    "val_pipeline",
    "test_pipeline",
    "label_map",
    "sync_bn",
    "channels_last",
    "precise_bn",
    "tensorboard",
    "env_cfg",
    "log_processor",
    "log_level",
    "visualizer",
    "vis_backends",
    "default_scope",
    "val_evaluator",
    "test_evaluator",
    "auto_scale_lr",
    "custom_hooks",
    "launcher",
    "dataset_type",
    "data_root",
    "data_root_val",
    "ann_file_train",
    "ann_file_val",
    "ann_file_test",
    "file_client_args",
    "data",
    "schedule",
    "optimizer",
    "seed",  # detection configs
)


def check_top_level(cfg: dict, where: str = "the config") -> None:
    """Raise a ConfigError for a top-level name that is a near-miss of a known one the config lacks (``train_cfgg``
    where ``train_cfg`` is absent): such a section would be ignored. Other free names (``data_root``) stay legal."""
    absent = [k for k in KNOWN_TOP_LEVEL_KEYS if k not in cfg]
    for key in cfg:
        if key in KNOWN_TOP_LEVEL_KEYS or str(key).startswith("_"):
            continue
        close = difflib.get_close_matches(str(key), absent, n=1, cutoff=0.85)
        if close:
            raise ConfigError(
                f"{where}: the top-level name '{key}' is not read by lateral. Did you mean "
                f"'{close[0]}'? (A variable of your own needs a name that is not this close.)"
            )


def positive_int_setting(value: Any, key: str) -> int:
    """``value`` as a count that must be a whole number >= 1; a ConfigError names ``key`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}")
    return value


def positive_number_setting(value: Any, key: str) -> float:
    """``value`` as a rate (a learning rate) that must be a number > 0; a ConfigError names ``key`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")
    return value


def check_bool_flags(section: dict, keys: Iterable[str], where: str = "") -> None:
    """Each of ``keys`` present in ``section`` must be True or False (a string 'false' would read as true); a
    ConfigError names it as ``where + key``."""
    for key in keys:
        if key in section and not isinstance(section[key], bool):
            raise ConfigError(f"{where}{key} must be True or False, got {section[key]!r}")
