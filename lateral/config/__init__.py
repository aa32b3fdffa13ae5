"""Config files in mmaction2's Python-dict syntax, read as data and checked.

- :mod:`lateral.config.evaluator`: the sandboxed evaluator that gives a file's statements their values.
- :mod:`lateral.config.loader`: :func:`load_config` (``_base_``, merging, ``_delete_``), ``--cfg-options``,
  :func:`write_config`.
- :mod:`lateral.config.validate`: :class:`ConfigError` and the checks the engines run on the dicts read.
"""

from lateral.config.loader import apply_cfg_options, load_config, merge_dicts, parse_cfg_value, write_config
from lateral.config.validate import (
    KNOWN_TOP_LEVEL_KEYS,
    ConfigError,
    check_bool_flags,
    check_keys,
    check_top_level,
    positive_int_setting,
    positive_number_setting,
    suggest,
)

__all__ = [
    "ConfigError",
    "load_config",
    "write_config",
    "merge_dicts",
    "apply_cfg_options",
    "parse_cfg_value",
    "suggest",
    "check_keys",
    "check_top_level",
    "positive_int_setting",
    "positive_number_setting",
    "check_bool_flags",
    "KNOWN_TOP_LEVEL_KEYS",
]
