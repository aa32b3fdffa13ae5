"""build_model: type lookup and keyword checking with suggestions."""

import pytest

import lateral
from lateral.config import ConfigError


def test_unknown_type_lists_known_and_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'ResNet3dSlowFast'") as info:
        lateral.build_model(dict(type="ResNet3DSlowfast"))
    assert "Recognizer3D" in str(info.value)


def test_misspelt_keyword_suggests_the_close_match():
    with pytest.raises(ConfigError, match="unknown key 'speed_ration'.*Did you mean 'speed_ratio'"):
        lateral.build_model(dict(type="ResNet3dSlowFast", speed_ration=4))


def test_misspelt_keyword_in_a_pathway_names_the_pathway():
    cfg = dict(type="ResNet3dSlowFast", slow_pathway=dict(type="resnet3d", depht=50, lateral=True))
    with pytest.raises(ConfigError, match="slow_pathway: unknown key 'depht'.*Did you mean 'depth'"):
        lateral.build_model(cfg)


def test_misspelt_keyword_of_a_parent_class_is_caught():
    with pytest.raises(ConfigError, match="Did you mean 'base_channels'"):
        lateral.build_model(dict(type="ResNet3dSlowOnly", base_channel=8))


def test_bare_backbone_and_head_dicts_build():
    head = lateral.build_model(dict(type="I3DHead", in_channels=16, num_classes=3))
    assert head.fc_cls.out_features == 3 and head.dropout.p == 0.5
    backbone = lateral.build_model(dict(type="ResNet3dSlowOnly", depth=18, base_channels=4))
    assert backbone.feat_dim == 32


def test_bad_values_are_reported():
    with pytest.raises(ConfigError, match="invalid depth 42"):
        lateral.build_model(dict(type="ResNet3d", depth=42))
    with pytest.raises(ConfigError, match="average_clips"):
        lateral.build_model(dict(type="Recognizer3D", backbone=dict(type="ResNet3dSlowOnly", depth=18, base_channels=4),
                                 cls_head=dict(type="I3DHead", in_channels=32, num_classes=3),
                                 test_cfg=dict(average_clips="mean")))
    with pytest.raises(ConfigError, match="norm_cfg type 'BN4d'"):
        lateral.build_model(dict(type="ResNet3d", depth=18, norm_cfg=dict(type="BN4d")))


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match="SlowFastHead: missing required key 'num_classes'"):
        lateral.build_model(dict(type="SlowFastHead", in_channels=16))
