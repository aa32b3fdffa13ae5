"""Recognizer3D's mmaction2 settings: data_preprocessor checks, to_rgb, feature extraction."""

import pytest
import torch

import lateral
from lateral.config import ConfigError
from lateral.engine.evaluate import collect_scores, prepare_inputs


def tiny(**extra):
    return dict(
        type="Recognizer3D",
        backbone=dict(
            type="ResNet3dSlowFast",
            resample_rate=4,
            speed_ratio=4,
            channel_ratio=4,
            slow_pathway=dict(
                type="resnet3d", depth=18, base_channels=4, lateral=True, conv1_kernel=(1, 7, 7), inflate=(0, 0, 1, 1)
            ),
            fast_pathway=dict(type="resnet3d", depth=18, base_channels=1, lateral=False, conv1_kernel=(5, 7, 7)),
        ),
        cls_head=dict(type="SlowFastHead", in_channels=40, num_classes=3),
        **extra,
    )


@pytest.mark.parametrize(
    "preprocessor, message",
    [
        (
            dict(type="ActionDataPreprocessor", maen=[0, 0, 0]),
            "data_preprocessor: unknown key 'maen'. Did you mean 'mean'",
        ),
        (
            dict(type="ActionDataPreprocesor"),
            "unknown type 'ActionDataPreprocesor'. Did you mean 'ActionDataPreprocessor'",
        ),
        (dict(format_shape="NCHW"), "format_shape='NCHW': Recognizer3D takes clips as NCTHW"),
        (dict(mean=[1.0, 2.0]), "data_preprocessor.mean must be 3 numbers"),
        (dict(mean=[0, 0, 0], std=[1.0, 0, 1.0]), "std must not contain 0"),
        (dict(blending=dict(type="Mixup", num_classes=3)), "data_preprocessor.blending: unknown type 'Mixup'"),
        (dict(mean=[123.7, 116.3, 103.5]), "give both mean and std, or neither"),
        (dict(to_rgb="yes"), "to_rgb must be True or False"),
        (
            dict(blending=dict(type="MixupBlending", alpha=0.2)),
            r"data_preprocessor.blending \(MixupBlending\): missing required key 'num_classes'",
        ),
        (
            dict(
                blending=dict(
                    type="RandomBatchAugment", augments=[dict(type="MixupBlending", num_classes=3)], probs="0.5"
                )
            ),
            "probs must be 1 non-negative numbers",
        ),
    ],
)
def test_data_preprocessor_mistakes_stop_the_build(preprocessor, message):
    with pytest.raises(ConfigError, match=message):
        lateral.build_model(tiny(data_preprocessor=preprocessor))


def test_to_rgb_swaps_channels_before_normalising():
    model = lateral.build_model(
        tiny(data_preprocessor=dict(mean=[10.0, 20.0, 30.0], std=[1.0, 2.0, 4.0], to_rgb=True, format_shape="NCTHW"))
    )
    frames = torch.stack([torch.full((1, 1, 1, 1), v, dtype=torch.uint8) for v in (100, 150, 200)], dim=0)
    inputs = prepare_inputs(frames.view(1, 1, 3, 1, 1, 1), model, torch.device("cpu")).flatten()
    # channel 0 now holds the old channel 2: (200 - 10) / 1, then (150 - 20) / 2, (100 - 30) / 4
    assert inputs.tolist() == [190.0, 65.0, 17.5]


def test_feature_extraction_returns_pooled_features_and_scoring_refuses_them():
    torch.manual_seed(0)
    model = lateral.build_model(tiny(test_cfg=dict(feature_extraction=True))).eval()
    clips = torch.randn(2, 3, 3, 8, 32, 32)  # 2 samples, 3 views
    features = model.predict(clips)
    assert features.shape == (2, 40)  # 32 slow + 8 fast channels
    slow, fast = model.backbone(clips[1].contiguous())
    expected = torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1).mean(dim=0)
    torch.testing.assert_close(features[1], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="feature_extraction=True, so predict returns pooled features"):
        collect_scores(model, [], torch.device("cpu"), progress=False)


def test_misplaced_or_mistyped_recognizer_settings_are_refused():
    with pytest.raises(ConfigError, match="model.train_cfg.blending is where mmaction2 0.x kept mixup"):
        lateral.build_model(tiny(train_cfg=dict(blending=dict(type="MixupBlending", num_classes=3))))
    with pytest.raises(ConfigError, match=r"model.train_cfg: unknown keys \['foo'\]"):
        lateral.build_model(tiny(train_cfg=dict(foo=1)))
    with pytest.raises(ConfigError, match="test_cfg.feature_extraction must be True or False, got 'False'"):
        lateral.build_model(tiny(test_cfg=dict(feature_extraction="False")))
