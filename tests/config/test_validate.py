"""The checks run on the settings read from a config: unknown keys, near-miss top-level names, counts, and the
error they raise."""

import pytest

from lateral.config import ConfigError, check_keys, check_top_level, positive_int_setting
from lateral.errors import LateralError


def test_check_keys_names_the_unknown_key_and_the_close_match():
    assert check_keys(None, ("a",), "x") == {}
    assert check_keys({"max_epochs": 2}, ("max_epochs", "val_interval"), "train_cfg") == {"max_epochs": 2}
    with pytest.raises(ConfigError, match="train_cfg: unknown key 'max_epoch'. Did you mean 'max_epochs'"):
        check_keys({"max_epoch": 2}, ("max_epochs", "val_interval"), "train_cfg")
    with pytest.raises(ConfigError, match="train_cfg must be a dict"):
        check_keys(3, ("max_epochs",), "train_cfg")


def test_top_level_near_miss_of_a_missing_section_is_refused():
    check_top_level({"train_cfg": {}, "data_root": "x", "img_norm_cfg": {}, "clip_len": 8})  # free names are fine
    with pytest.raises(ConfigError, match="'train_cfgg' is not read by lateral. Did you mean 'train_cfg'"):
        check_top_level({"train_cfgg": {"max_epochs": 2}})
    with pytest.raises(ConfigError, match="Did you mean 'schedule'"):
        check_top_level({"schedul": {"max_iters": 4}})


def test_counts_must_be_whole_positive_numbers():
    assert positive_int_setting(3, "train_cfg.max_epochs") == 3
    for bad in (0, -3, 1.7, "abc", True):
        with pytest.raises(ConfigError, match="train_cfg.max_epochs must be a whole number >= 1"):
            positive_int_setting(bad, "train_cfg.max_epochs")


def test_config_errors_are_lateral_errors_and_still_value_errors():
    with pytest.raises(LateralError, match="train_cfg: unknown key 'max_epoch'"):  # the CLI prints these as one line
        check_keys({"max_epoch": 2}, ("max_epochs",), "train_cfg")
    with pytest.raises(ValueError, match="train_cfg.max_epochs must be a whole number"):  # callers that catch these
        positive_int_setting(0, "train_cfg.max_epochs")
