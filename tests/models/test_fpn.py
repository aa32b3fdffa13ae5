"""ResNetFPN: the seed network's size and shapes, parity with torchvision's resnet_fpn_backbone."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as TvLastLevelP6P7

import lateral
from golden import GoldenCase
from lateral.config import ConfigError
from lateral.models.fpn import FeaturePyramid, ResNetFPN


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_seed_fpn50_parameter_count_and_level_shapes():
    model = lateral.build_model(dict(type="ResNetFPN", depth=50, style="seed")).eval()
    assert num_params(model) == 26_262_336
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert list(out) == ["p2", "p3", "p4", "p5"]
    assert [tuple(v.shape) for v in out.values()] == [(1, 256, s, s) for s in (56, 28, 14, 7)]
    assert all(p.requires_grad for p in model.parameters())  # the seed trains everything, BN included


@pytest.mark.parametrize("depth, expected", [(101, 45_254_464), (152, 60_898_112)])
def test_seed_fpn101_fpn152_parameter_counts(depth, expected):
    assert num_params(ResNetFPN(depth=depth, style="seed")) == expected


def test_seed_top_level_is_the_c5_lateral_and_lower_levels_are_smoothed():
    model = ResNetFPN(depth=18, style="seed").eval()
    assert len(model.fpn.layer_blocks) == 3 and len(model.fpn.inner_blocks) == 4
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c = list(model.body(x).values())
        out = model(x)
        top = model.fpn.inner_blocks[3](c[3])
        expected_p4 = model.fpn.layer_blocks[2](
            model.fpn.inner_blocks[2](c[2]) + torch.nn.functional.interpolate(top, size=c[2].shape[-2:], mode="nearest")
        )
    torch.testing.assert_close(out["p5"], top)
    torch.testing.assert_close(out["p4"], expected_p4)


def test_torchvision_style_matches_golden_vectors():
    case = GoldenCase("tv_fpn_r50")
    model = ResNetFPN(depth=50, style="torchvision").eval()
    state = case.state_dict()
    assert list(model.state_dict()) == list(state)
    lateral.load_checkpoint(model, state, strict=True)
    with torch.no_grad():
        out = model(case.input())
    digest = case.expected
    assert list(out) == list(digest["outputs"]) == ["0", "1", "2", "3", "pool"]
    for name, ref in digest["outputs"].items():
        assert list(out[name].shape) == ref["shape"].tolist()
        flat = out[name].flatten()
        torch.testing.assert_close(flat[:: digest["stride"]], ref["subsample"], rtol=1e-4, atol=1e-4)
        values = flat.double()
        total, squares, absolute = ref["stats"]
        assert abs(values.sum() - total) <= 1e-5 * absolute + 1e-3
        assert torch.isclose((values * values).sum(), squares, rtol=1e-4)
        assert torch.isclose(values.abs().sum(), absolute, rtol=1e-4)


@pytest.mark.parametrize(
    "options, tv_options",
    [
        (dict(), dict()),
        (
            dict(returned_layers=[2, 3, 4], extra_blocks="p6p7", trainable_layers=5),
            dict(returned_layers=[2, 3, 4], extra_blocks=TvLastLevelP6P7(256, 256), trainable_layers=5),
        ),
        (
            dict(extra_blocks="p6p7_c5", trainable_layers=0),
            dict(extra_blocks=TvLastLevelP6P7(512, 256), trainable_layers=0),
        ),
        (dict(returned_layers=[1, 3]), dict(returned_layers=[1, 3])),
    ],
)
def test_torchvision_state_dict_loads_strictly_and_outputs_match(options, tv_options):
    torch.manual_seed(0)
    reference = resnet_fpn_backbone(backbone_name="resnet18", weights=None, **tv_options).eval()
    model = ResNetFPN(depth=18, style="torchvision", **options).eval()
    assert list(model.state_dict()) == list(reference.state_dict())
    lateral.load_checkpoint(model, reference.state_dict(), strict=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in reference.named_parameters() if p.requires_grad]
    x = torch.randn(2, 3, 75, 101)  # odd sides: 19x26 -> 10x13 -> 5x7 -> 3x4
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5)
    assert model.out_channels == 256


def test_feature_contract_names_channels_strides_match_outputs():
    model = ResNetFPN(depth=18, style="torchvision", extra_blocks="p6p7").eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        out = model(x)
    specs = model.output_shape()
    assert list(specs) == list(out) == ["0", "1", "2", "3", "p6", "p7"]
    for name, feature in out.items():
        assert feature.shape[1] == specs[name].channels
        stride = specs[name].stride
        assert feature.shape[-2:] == (-(-128 // stride), -(-160 // stride))  # ceil: stride-2 convs pad
    assert [s.stride for s in model.pyramid_info] == [4, 8, 16, 32]
    assert [s.channels for s in model.body.feature_info] == [64, 128, 256, 512]


def test_fpn_norm_matches_torchvision_pyramid_with_norm_layer():
    torch.manual_seed(0)
    in_channels = [16, 32, 64]
    reference = FeaturePyramidNetwork(in_channels, 32, norm_layer=torch.nn.BatchNorm2d).eval()
    ours = FeaturePyramid(in_channels, 32, norm="BN").eval()
    assert "inner_blocks.0.0.bias" not in ours.state_dict()  # the norm carries the bias
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    ours.load_state_dict(reference.state_dict(), strict=True)
    inputs = [torch.randn(1, c, 33 // 2**i, 21 // 2**i) for i, c in enumerate(in_channels)]
    with torch.no_grad():
        expected = list(reference({str(i): t for i, t in enumerate(inputs)}).values())
        got = ours(inputs)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(style="detectron"), "unknown FPN style"),
        (dict(depth=42), "depth 42"),
        (dict(extra_blocks="p6"), "unknown extra_blocks"),
        (dict(returned_layers=[0, 1]), "returned_layers"),
        (dict(body_norm="SyncBN"), "unknown norm"),
    ],
)
def test_bad_options_name_the_problem(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ResNetFPN(**kwargs)


def test_seed_config_file_builds_the_seed_network():
    cfg = lateral.load_config("configs/detection/fpn_r50_seed.py")
    assert cfg["input_shape"] == (1, 3, 224, 224)
    model = lateral.build_model(cfg["model"])
    assert model.style == "seed" and num_params(model) == 26_262_336


@pytest.mark.parametrize(
    "shape, message",
    [
        (
            (1, 3, 8, 32, 32),
            r"expected a 4-D image batch \[N, C, H, W\], got shape \[1, 3, 8, 32, 32\] \(a 2D backbone",
        ),
        ((1, 32, 32, 3), r"expected 3 channels in dim 1 of \[N, C, H, W\], got shape \[1, 32, 32, 3\]"),
    ],
)
def test_wrong_input_layout_is_named(shape, message):
    model = ResNetFPN(depth=18, style="seed").eval()
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))
