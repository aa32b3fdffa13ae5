"""Config files in mmaction2's Python-dict syntax, read as data (see :mod:`lateral.config.loader`)."""

from lateral.config.loader import (
    KNOWN_TOP_LEVEL_KEYS, ConfigError, apply_cfg_options, check_bool_flags, check_keys, check_top_level, load_config,
    merge_dicts, parse_cfg_value, positive_int_setting, positive_number_setting, suggest, write_config,
)

__all__ = [
    "ConfigError", "load_config", "write_config", "merge_dicts", "apply_cfg_options", "parse_cfg_value", "suggest",
    "check_keys", "check_top_level", "positive_int_setting", "positive_number_setting", "check_bool_flags",
    "KNOWN_TOP_LEVEL_KEYS",
]
