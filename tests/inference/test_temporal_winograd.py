"""Winograd F(2, 3) / F(4, 3) over time for 3x1x1 convs of the fp32 inference copy: numerics and routing."""

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lateral
from lateral.inference.optimization import OneDnnConv, onednn_convs_available
from lateral.inference.temporal_winograd import (
    TEMPORAL_ALGORITHMS,
    TemporalWinogradConv,
    temporal_winograd_weight,
    use_temporal_winograd_convs,
    winograd_conv3x1x1,
)
from lateral.inference.winograd import route_summary, size_class

pytestmark = pytest.mark.skipif(
    not onednn_convs_available(torch.float32, torch.device("cpu")), reason="oneDNN convolutions are not available"
)
ALGORITHMS = pytest.mark.parametrize("name", list(TEMPORAL_ALGORITHMS))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("batch, frames", [(1, 4), (2, 4), (1, 1), (1, 2), (1, 3), (2, 5), (1, 8), (1, 9)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@ALGORITHMS
def test_matches_conv3d(batch, frames, bias, relu, name):
    # frame counts that are not a multiple of the tile exercise the zero-padded, cropped last tile
    algorithm = TEMPORAL_ALGORITHMS[name]
    torch.manual_seed(frames)
    in_channels, out_channels, height, width = 6, 5, 3, 4
    x = torch.randn(batch, in_channels, frames, height, width, dtype=torch.float64)
    weight = torch.randn(out_channels, in_channels, 3, 1, 1, dtype=torch.float64)
    b = torch.randn(out_channels, dtype=torch.float64) if bias else None
    ref = F.conv3d(x, weight, b, padding=(1, 0, 0))
    ref = ref.relu() if relu else ref
    clip = x.float().permute(0, 2, 3, 4, 1).reshape(batch, frames, height * width, in_channels).contiguous()
    out = winograd_conv3x1x1(
        clip, temporal_winograd_weight(weight.float(), algorithm), None if b is None else b.float(), relu, algorithm
    )
    assert out.shape == (batch, frames, height * width, out_channels) and out.is_contiguous()
    out = out.view(batch, frames, height, width, out_channels).permute(0, 4, 1, 2, 3)
    assert relative_error(out.double(), ref) < 2e-6


def test_weight_shape_errors():
    with pytest.raises(ValueError, match=r"\[C_out, C_in, 3, 1, 1\]"):
        temporal_winograd_weight(torch.randn(4, 4, 1, 3, 3))
    weight = temporal_winograd_weight(torch.randn(4, 6, 3, 1, 1), TEMPORAL_ALGORITHMS["f2"])
    assert weight.shape == (4, 6, 4)
    with pytest.raises(ValueError, match="does not fit an input with 5 channels"):
        winograd_conv3x1x1(torch.randn(1, 4, 2, 5), weight, algorithm=TEMPORAL_ALGORITHMS["f2"])
    with pytest.raises(ValueError, match="F\\(4, 3\\)"):  # an F(2, 3) weight given to F(4, 3)
        winograd_conv3x1x1(torch.randn(1, 4, 2, 6), weight, algorithm=TEMPORAL_ALGORITHMS["f4"])
    with pytest.raises(ValueError, match="contiguous"):
        winograd_conv3x1x1(torch.randn(1, 6, 2, 4).transpose(1, 3), weight, algorithm=TEMPORAL_ALGORITHMS["f2"])


def temporal_conv(relu: bool = True, channels: int = 8) -> tuple[nn.Conv3d, TemporalWinogradConv]:
    torch.manual_seed(0)
    conv = nn.Conv3d(channels, channels + 2, (3, 1, 1), padding=(1, 0, 0))
    return conv, TemporalWinogradConv(OneDnnConv(conv, relu=relu))


@pytest.mark.parametrize("mode", ["f2", "f4", "direct", "auto"])
def test_module_routes_agree_with_the_conv(mode):
    conv, module = temporal_conv()
    module.mode = mode
    x = torch.randn(2, 8, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        out = module(x)
        ref = conv(x.contiguous()).relu()
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last_3d)
    assert relative_error(out, ref) < 1e-5
    assert list(module.routes) == ([size_class(x)] if mode == "auto" else [])
    if mode == "auto":
        assert module.routes[size_class(x)] in TemporalWinogradConv.ROUTES
        assert route_summary(nn.Sequential(module)) == f"winograd routes: {module.routes[size_class(x)]} 1"


def test_unknown_mode_is_refused_and_2d_routes_are_not_routes_here():
    _, module = temporal_conv()
    module.mode = "f4x4"  # a 3x3 route
    with pytest.raises(ValueError, match="TemporalWinogradConv.mode must be 'auto' or one of"):
        module(torch.randn(1, 8, 4, 2, 2).contiguous(memory_format=torch.channels_last_3d))


def test_add_and_other_layouts_take_the_direct_conv():
    conv, module = temporal_conv(relu=False)
    module.mode = "f4"
    x = torch.randn(1, 8, 4, 3, 3)  # contiguous NCTHW, not channels-last-3d
    other = torch.randn(1, 10, 4, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        assert relative_error(module(x), conv(x)) < 1e-5
        x = x.contiguous(memory_format=torch.channels_last_3d)
        assert relative_error(module.add_relu(x, other.clone()), (conv(x) + other).relu()) < 1e-5
    assert module.routes == {}


def test_copies_drop_the_transformed_weight():
    _, module = temporal_conv()
    module.mode = "f4"
    x = torch.randn(1, 8, 4, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        out = module(x)
        assert list(module._transformed) == ["f4"]
        for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
            assert clone._transformed == {}
            assert torch.allclose(clone(x), out, atol=1e-6)
    assert set(module.state_dict()) == {"weight", "bias"}


def test_only_wide_stride_1_temporal_convs_are_replaced():
    model = nn.Sequential(
        OneDnnConv(nn.Conv3d(256, 128, (3, 1, 1), padding=(1, 0, 0))),  # replaced
        OneDnnConv(nn.Conv3d(256, 64, (3, 1, 1), padding=(1, 0, 0))),  # too narrow to win here
        OneDnnConv(nn.Conv3d(256, 128, (3, 1, 1), padding=(1, 0, 0), stride=(2, 1, 1))),
        OneDnnConv(nn.Conv3d(256, 128, (3, 1, 1), padding=(0, 0, 0))),
        OneDnnConv(nn.Conv3d(256, 128, (5, 1, 1), padding=(2, 0, 0))),
        OneDnnConv(nn.Conv3d(256, 128, (3, 3, 3), padding=1)),
        OneDnnConv(nn.Conv3d(256, 256, (3, 1, 1), padding=(2, 0, 0), dilation=(2, 1, 1))),
    )
    assert use_temporal_winograd_convs(model) == 1
    assert [type(m) is TemporalWinogradConv for m in model] == [True] + [False] * 6


def test_fp32_slowfast_copy_routes_its_temporal_convs(monkeypatch):
    torch.manual_seed(0)
    model = lateral.build_model("configs/recognition/slowfast/slowfast_r50_4x16x1_kinetics400.py").eval()
    x = torch.randn(1, 3, 16, 32, 32)
    opt = lateral.optimize(model)
    convs = {name: m for name, m in opt.named_modules() if isinstance(m, TemporalWinogradConv)}
    # conv1 of every slow res4 and res5 block: 6 + 3
    assert len(convs) == 9 and all(".slow_path.layer3." in n or ".slow_path.layer4." in n for n in convs)
    with torch.no_grad():
        ref = model(x)
        for mode in ("f4", "f2"):
            for conv in convs.values():
                conv.mode = mode
            assert relative_error(opt(x), ref) < 1e-4
    monkeypatch.setenv("LATERAL_WINOGRAD", "0")
    assert not any(isinstance(m, TemporalWinogradConv) for m in lateral.optimize(model).modules())


def test_bf16_tiles_give_bf16_outputs_and_bf16_copies_stay_direct():
    algorithm = TEMPORAL_ALGORITHMS["f2"]
    torch.manual_seed(0)
    x = torch.randn(1, 16, 4, 3, 3)
    weight = torch.randn(8, 16, 3, 1, 1) / 7
    clip = x.permute(0, 2, 3, 4, 1).reshape(1, 4, 9, 16).contiguous()
    out = winograd_conv3x1x1(
        clip.bfloat16(), temporal_winograd_weight(weight, algorithm).bfloat16(), algorithm=algorithm
    )
    ref = F.conv3d(x, weight, padding=(1, 0, 0)).permute(0, 2, 3, 4, 1).reshape(1, 4, 9, 8)
    assert out.dtype == torch.bfloat16 and relative_error(out.float(), ref) < 3e-2
    model = lateral.build_model("configs/recognition/slowfast/slowfast_r50_4x16x1_kinetics400.py").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 without native support only warns
        opt = lateral.optimize(model, precision="bf16")
    assert not any(isinstance(m, TemporalWinogradConv) for m in opt.modules())
