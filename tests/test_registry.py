"""build_model: type lookup and keyword checking with suggestions."""

import pytest
import torch

import lateral
from lateral.config import ConfigError
from lateral.registry import build_from_table


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
        lateral.build_model(
            dict(
                type="Recognizer3D",
                backbone=dict(type="ResNet3dSlowOnly", depth=18, base_channels=4),
                cls_head=dict(type="I3DHead", in_channels=32, num_classes=3),
                test_cfg=dict(average_clips="mean"),
            )
        )
    with pytest.raises(ConfigError, match="norm_cfg type 'BN4d'"):
        lateral.build_model(dict(type="ResNet3d", depth=18, norm_cfg=dict(type="BN4d")))


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"model \(SlowFastHead\): missing required key 'num_classes'"):
        lateral.build_model(dict(type="SlowFastHead", in_channels=16))


# ------------------------------------------------------------------------------------------- build_from_table


class _Step:
    def __init__(self, scale, keep_ratio: bool = True):
        self.scale, self.keep_ratio = scale, keep_ratio


_TABLE = {"Resize": _Step, "Flip": _Step}


def test_build_from_table_refuses_an_unknown_type_with_the_closest_name():
    with pytest.raises(
        ConfigError,
        match=r"test_pipeline\[2\]: unknown type 'Resise'. Did you mean 'Resize'\? "
        r"Known types: Flip, Resize",
    ):
        build_from_table(_TABLE, dict(type="Resise", scale=3), "test_pipeline[2]")
    with pytest.raises(ConfigError, match=r"test_pipeline\[2\]: expected a dict with a 'type' key"):
        build_from_table(_TABLE, dict(scale=3), "test_pipeline[2]")


def test_build_from_table_refuses_an_unknown_key_naming_where_and_the_close_match():
    with pytest.raises(
        ConfigError,
        match=r"train_dataloader.dataset.pipeline\[3\] \(Resize\): unknown key 'scael'. "
        r"Did you mean 'scale'\?",
    ):
        build_from_table(_TABLE, dict(type="Resize", scael=3), "train_dataloader.dataset.pipeline[3]")
    # a misspelt required key is reported as misspelt, not as missing
    with pytest.raises(ConfigError, match="unknown key 'keep_ration'. Did you mean 'keep_ratio'"):
        build_from_table(_TABLE, dict(type="Resize", scale=3, keep_ration=False), "pipeline[0]")


def test_build_from_table_names_a_missing_required_key():
    with pytest.raises(ConfigError, match=r"pipeline\[0\] \(Resize\): missing required key 'scale'"):
        build_from_table(_TABLE, dict(type="Resize", keep_ratio=False), "pipeline[0]")


def test_build_from_table_strips_mmengine_scopes_and_leaves_the_config_alone():
    cfg = dict(type="mmaction.Resize", scale=3, _scope_="mmaction")
    step = build_from_table(_TABLE, cfg, "pipeline[0]")
    assert isinstance(step, _Step) and step.scale == 3
    assert cfg == dict(type="mmaction.Resize", scale=3, _scope_="mmaction")
    assert build_from_table(_TABLE, dict(type="mmdet.Resize", scale=4), "pipeline[0]").scale == 4
    with pytest.raises(ConfigError, match="type 'mmactoin.Resize' has the scope 'mmactoin'. Did you mean 'mmaction'"):
        build_from_table(_TABLE, dict(type="mmactoin.Resize", scale=3), "pipeline[0]")
    with pytest.raises(ConfigError, match="_scope_='mmfoo' is not an OpenMMLab scope"):
        build_from_table(_TABLE, dict(type="Resize", scale=3, _scope_="mmfoo"), "pipeline[0]")
    head = lateral.build_model(dict(type="mmaction.I3DHead", in_channels=16, num_classes=3))
    assert head.fc_cls.out_features == 3


def test_build_from_table_defaults_fill_what_the_config_leaves_out():
    assert build_from_table(_TABLE, dict(type="Flip"), "pipeline[0]", scale=5).scale == 5
    assert build_from_table(_TABLE, dict(type="Flip", scale=6), "pipeline[0]", scale=5).scale == 6


def test_every_table_goes_through_the_same_checks():
    from lateral.data import build_dataset, build_pipeline
    from lateral.data.blending import build_blending
    from lateral.engine.optim import build_lr_factor, build_optimizer

    with pytest.raises(ConfigError, match=r"val_pipeline\[1\] \(Resize\): unknown key 'scael'. Did you mean 'scale'"):
        build_pipeline([dict(type="SampleFrames", clip_len=2), dict(type="Resize", scael=(-1, 8))], "val_pipeline")
    with pytest.raises(
        ConfigError,
        match=r"val_dataloader.dataset.pipeline\[0\]: unknown type 'SampleFrame'. "
        r"Did you mean 'SampleFrames'",
    ):
        build_dataset(
            dict(type="VideoDataset", ann_file="x.txt", pipeline=[dict(type="SampleFrame")]), "val_dataloader.dataset"
        )
    with pytest.raises(ConfigError, match=r"dataset: unknown type 'VideoDataSet'. Did you mean 'VideoDataset'"):
        build_dataset(dict(type="VideoDataSet", ann_file="x.txt", pipeline=[]))
    assert build_blending(dict(type="mmaction.MixupBlending", num_classes=3)).num_classes == 3
    with pytest.raises(
        ConfigError,
        match=r"param_scheduler.0: unknown type 'CosineAnnealing'. "
        r"Did you mean 'CosineAnnealingLR'",
    ):
        build_lr_factor([dict(type="CosineAnnealing")], 10, 5, 0.1)
    assert build_lr_factor([dict(type="mmengine.ConstantLR", factor=0.5, end=1)], 10, 5, 0.1)(0) == 0.5
    model = torch.nn.Linear(2, 2)
    assert type(build_optimizer(model, dict(optimizer=dict(type="mmengine.AdamW", lr=0.1)))).__name__ == "AdamW"
    with pytest.raises(ConfigError, match=r"optim_wrapper.optimizer \(SGD\): unknown key 'lrr'. Did you mean 'lr'"):
        build_optimizer(model, dict(optimizer=dict(lrr=0.1)))
