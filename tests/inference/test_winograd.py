"""Winograd F(2x2, 3x3) convs of the fp32 inference copy: numerics against F.conv2d/conv3d and the routing."""

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lateral
from lateral.inference import winograd
from lateral.inference.optimization import OneDnnConv, onednn_convs_available
from lateral.inference.winograd import (
    F2X2,
    F4X4,
    WinogradConv,
    route_summary,
    size_class,
    use_winograd_convs,
    winograd_conv3x3,
    winograd_weight,
)

ALGORITHMS = pytest.mark.parametrize("algorithm", [F2X2, F4X4], ids=["f2x2", "f4x4"])
# F(4x4, 3x3) rounds more in its transforms (about 1e-5 of the largest output on random data, see the module)
TOLERANCE = {2: 1e-5, 4: 5e-5}

pytestmark = pytest.mark.skipif(
    not onednn_convs_available(torch.float32, torch.device("cpu")), reason="oneDNN convolutions are not available"
)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize(
    "shape", [(1, 8, 5, 7, 9), (2, 6, 4, 8, 8), (1, 3, 3, 1, 1), (3, 4, 6, 5, 2), (1, 5, 7, 6, 11)]
)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@ALGORITHMS
def test_matches_direct_convolution(shape, bias, relu, algorithm):
    batch, in_channels, out_channels, height, width = shape
    torch.manual_seed(0)
    x = torch.randn(batch, in_channels, height, width)
    weight = torch.randn(out_channels, in_channels, 3, 3)
    b = torch.randn(out_channels) if bias else None
    ref = F.conv2d(x, weight, b, padding=1)
    ref = ref.relu() if relu else ref
    out = winograd_conv3x3(x.permute(0, 2, 3, 1).contiguous(), winograd_weight(weight, algorithm), b, relu, algorithm)
    assert out.shape == (batch, height, width, out_channels) and out.is_contiguous()
    assert relative_error(out.permute(0, 3, 1, 2), ref) < TOLERANCE[algorithm.outputs]


@pytest.mark.parametrize("height, width", [(16, 12), (17, 13), (9, 30), (18, 7)])
@ALGORITHMS
def test_many_bands_and_ragged_edges(monkeypatch, height, width, algorithm):
    # a tiny band forces one or two tile rows per band, so band borders, the last partial band and the crop of tiles
    # that overhang the map all run
    monkeypatch.setattr(winograd, "_BAND_FLOATS", algorithm.size**2 * 4 * 8)
    torch.manual_seed(1)
    x = torch.randn(2, 8, height, width)
    weight, bias = torch.randn(6, 8, 3, 3), torch.randn(6)
    out = winograd_conv3x3(
        x.permute(0, 2, 3, 1).contiguous(), winograd_weight(weight, algorithm), bias, True, algorithm
    )
    ref = F.conv2d(x, weight, bias, padding=1).relu()
    assert relative_error(out.permute(0, 3, 1, 2), ref) < TOLERANCE[algorithm.outputs]
    # with a shortcut added before the ReLU, written into the shortcut's own memory
    shortcut = torch.randn(2, height, width, 6)
    expected = (F.conv2d(x, weight, bias, padding=1) + shortcut.permute(0, 3, 1, 2)).relu()
    result = winograd_conv3x3(
        x.permute(0, 2, 3, 1).contiguous(),
        winograd_weight(weight, algorithm),
        bias,
        True,
        algorithm,
        residual=shortcut,
        out=shortcut,
    )
    assert result is shortcut
    assert relative_error(result.permute(0, 3, 1, 2), expected) < TOLERANCE[algorithm.outputs]


@ALGORITHMS
def test_shared_scratch_is_reset_between_maps_of_different_widths(algorithm):
    # the per-thread scratch of a wide map holds non-zero data where a narrower map needs its zero border
    torch.manual_seed(2)
    weight = torch.randn(4, 4, 3, 3)
    transformed = winograd_weight(weight, algorithm)
    wide = torch.randn(1, 4, 10, 31) * 100
    winograd_conv3x3(wide.permute(0, 2, 3, 1).contiguous(), transformed, algorithm=algorithm)
    narrow = torch.randn(1, 4, 10, 6)
    out = winograd_conv3x3(narrow.permute(0, 2, 3, 1).contiguous(), transformed, algorithm=algorithm)
    ref = F.conv2d(narrow, weight, padding=1)
    assert relative_error(out.permute(0, 3, 1, 2), ref) < TOLERANCE[algorithm.outputs]


def test_weight_shape_errors():
    with pytest.raises(ValueError, match=r"\[C_out, C_in, 3, 3\]"):
        winograd_weight(torch.randn(4, 4, 5, 5))
    with pytest.raises(ValueError, match="does not fit"):
        winograd_conv3x3(torch.randn(1, 4, 4, 3), winograd_weight(torch.randn(2, 5, 3, 3)))
    with pytest.raises(ValueError, match=r"F\(4x4, 3x3\) \(36 taps\)"):  # a F(2x2) weight given to F(4x4)
        winograd_conv3x3(torch.randn(1, 4, 4, 5), winograd_weight(torch.randn(2, 5, 3, 3)), algorithm=F4X4)
    with pytest.raises(ValueError, match="out must be a contiguous"):
        winograd_conv3x3(torch.randn(1, 4, 4, 5), winograd_weight(torch.randn(2, 5, 3, 3)), out=torch.empty(1, 4, 4, 3))


@ALGORITHMS
def test_weight_of_a_1x3x3_conv3d(algorithm):
    weight = torch.randn(3, 2, 1, 3, 3)
    transformed = winograd_weight(weight, algorithm)
    assert transformed.shape == (algorithm.size**2, 2, 3)
    assert torch.equal(transformed, winograd_weight(weight[:, :, 0], algorithm))


@ALGORITHMS
def test_transforms_reproduce_a_1d_correlation(algorithm):
    # the defining identity: A^T [(G g) * (B^T d)] = the m outputs of correlating d (m + 2 taps) with g (3 taps)
    input_t, weight_t, output_t = (
        torch.tensor(t, dtype=torch.float64) for t in (algorithm.input_t, algorithm.weight_t, algorithm.output_t)
    )
    d, g = torch.randn(algorithm.size, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    expected = torch.stack([(d[i : i + 3] * g).sum() for i in range(algorithm.outputs)])
    torch.testing.assert_close(output_t @ ((weight_t @ g) * (input_t @ d)), expected)


def winograd_conv(dims: int, channels: int = 8, relu: bool = True) -> tuple[nn.Module, WinogradConv]:
    torch.manual_seed(3)
    if dims == 2:
        conv = nn.Conv2d(channels, channels + 2, 3, padding=1)
    else:
        conv = nn.Conv3d(channels, channels + 2, (1, 3, 3), padding=(0, 1, 1))
    return conv, WinogradConv(OneDnnConv(conv, relu=relu))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["f2x2", "f4x4", "direct", "auto"])
def test_module_routes_agree_with_the_conv(dims, mode):
    conv, module = winograd_conv(dims)
    module.mode = mode
    shape = (2, 8, 9, 10) if dims == 2 else (2, 8, 3, 9, 10)
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    x = torch.randn(shape).contiguous(memory_format=layout)
    with torch.no_grad():
        out = module(x)
        ref = conv(x.contiguous()).relu()
    assert out.shape == ref.shape and out.is_contiguous(memory_format=layout)
    assert relative_error(out, ref) < 5e-5
    assert list(module.routes) == ([size_class(x)] if mode == "auto" else [])
    if mode == "auto":
        assert module.routes[size_class(x)] in ("f2x2", "f4x4", "direct")
        assert "winograd=auto" in repr(module) and "maps/sample of ~2^7 px" in repr(module)


def test_routes_are_measured_once_per_size_class(monkeypatch):
    _, module = winograd_conv(2)
    measured = []
    monkeypatch.setattr(module, "_measure", lambda x, other: measured.append(tuple(x.shape)) or "f2x2")
    with torch.no_grad():
        for batch, height, width in [(1, 30, 40), (1, 32, 36), (1, 31, 33), (4, 60, 40), (3, 30, 40), (2, 61, 39)]:
            module(torch.randn(batch, 8, height, width).contiguous(memory_format=torch.channels_last))
    # 1200 and 1152 pixels share a class (2^10 < p <= 2^11); 1023 is in the one below, 2400 and 2379 in the one
    # above; the batch size does not count, and each class is timed on one sample
    assert measured == [(1, 8, 30, 40), (1, 8, 31, 33), (1, 8, 60, 40)]
    assert size_class(torch.randn(2, 8, 3, 9, 10)) == (3, 7)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["f2x2", "f4x4", "direct", "auto"])
@pytest.mark.parametrize("inplace", [False, True])
def test_add_matches_the_conv_plus_shortcut(dims, mode, inplace):
    conv, module = winograd_conv(dims, relu=False)
    module.mode = mode
    shape = (2, 8, 9, 10) if dims == 2 else (2, 8, 3, 9, 10)
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    x = torch.randn(shape).contiguous(memory_format=layout)
    other = torch.randn(2, 10, *shape[2:]).contiguous(memory_format=layout)
    kept = other.clone()
    with torch.no_grad():
        ref = (conv(x.contiguous()) + kept).relu()
        out = module.add_relu(x, other, inplace=inplace)
        plain = module.add(x, kept.clone())  # without the ReLU: always the direct route
    assert relative_error(out, ref) < 5e-5 and out.is_contiguous(memory_format=layout)
    if inplace:
        assert out.data_ptr() == other.data_ptr()
    else:
        assert torch.equal(other, kept)
    assert relative_error(plain, conv(x.contiguous()) + kept) < 1e-5
    if mode == "auto":
        assert list(module.routes) == [(*size_class(x), "add")] and "+ shortcut" in repr(module)


def test_unknown_mode_is_refused():
    _, module = winograd_conv(2)
    module.mode = "f6x6"
    with pytest.raises(ValueError, match="'auto' or one of"):
        module(torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last))


def test_other_layouts_and_dtypes_take_the_direct_conv():
    conv, module = winograd_conv(2, relu=False)
    module.mode = "f4x4"
    x = torch.randn(1, 8, 6, 6)  # contiguous NCHW, not channels-last: no NHWC view to run on
    with torch.no_grad():
        assert relative_error(module(x), conv(x)) < 1e-5
    assert module.routes == {}


def test_copies_drop_the_transformed_weight():
    _, module = winograd_conv(2)
    module.mode = "f4x4"
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = module(x)
        assert list(module._transformed) == ["f4x4"]
        for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
            assert clone._transformed == {}
            assert torch.allclose(clone(x), out, atol=1e-6)


def test_only_wide_stride_1_convs_are_replaced():
    model = nn.Sequential(
        OneDnnConv(nn.Conv2d(256, 256, 3, padding=1)),  # replaced
        OneDnnConv(nn.Conv2d(256, 256, 3, padding=1, stride=2)),
        OneDnnConv(nn.Conv2d(64, 256, 3, padding=1)),  # too narrow to win here
        OneDnnConv(nn.Conv2d(256, 256, 1)),
        OneDnnConv(nn.Conv3d(256, 256, (3, 3, 3), padding=1)),
        OneDnnConv(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1))),  # replaced
        OneDnnConv(nn.Conv2d(256, 256, 3, padding=2, dilation=2)),
    )
    assert use_winograd_convs(model) == 2
    assert [type(m) is WinogradConv for m in model] == [True, False, False, False, False, True, False]


def test_fp32_copy_of_an_fpn_uses_winograd_and_keeps_parity():  # F(4x4): the one that rounds more
    from lateral.models.fpn import ResNetFPN

    torch.manual_seed(0)
    model = ResNetFPN(depth=18, style="torchvision").eval()  # 128- to 512-channel 3x3 convs
    x = torch.randn(1, 3, 96, 80)
    opt = lateral.optimize(model, precision="fp32")
    convs = [m for m in opt.modules() if isinstance(m, WinogradConv)]
    assert convs, "no 3x3 conv of at least 128 channels was given the Winograd route"
    for conv in convs:
        conv.mode = "f4x4"
    assert all(set(conv.state_dict()) == {"weight", "bias"} for conv in convs)  # checkpoint names unchanged
    with torch.no_grad():
        ref = model(x)
        out = opt(x)
    ref_levels = list(ref.values()) if isinstance(ref, dict) else list(ref)
    out_levels = list(out.values()) if isinstance(out, dict) else list(out)
    assert len(out_levels) == len(ref_levels)
    for level, ref_level in zip(out_levels, ref_levels):
        assert relative_error(level, ref_level) < 1e-4
    assert route_summary(opt) == ""  # forced modes record no routes
    # the basic blocks' last convs (conv2) add the shortcut and ReLU on the Winograd route too
    assert any(name.endswith(".conv2") for name, m in opt.named_modules() if isinstance(m, WinogradConv))
    convs[0].mode = "auto"
    with torch.no_grad():
        opt(x)
    assert route_summary(opt).startswith("winograd routes: ") and route_summary(opt).endswith(" 1")


def test_environment_switch_keeps_every_conv_direct(monkeypatch):
    from lateral.models.fpn import ResNetFPN

    model = ResNetFPN(depth=18, style="torchvision").eval()
    monkeypatch.setenv("LATERAL_WINOGRAD", "0")
    assert not any(isinstance(m, WinogradConv) for m in lateral.optimize(model).modules())
    monkeypatch.setenv("LATERAL_WINOGRAD", "1")
    assert any(isinstance(m, WinogradConv) for m in lateral.optimize(model).modules())


def test_bf16_copies_keep_the_direct_convs():
    from lateral.models.fpn import ResNetFPN

    model = ResNetFPN(depth=18, style="torchvision").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 without native support only warns
        opt = lateral.optimize(model, precision="bf16")
    assert opt.dtype == torch.bfloat16
    assert not any(isinstance(m, WinogradConv) for m in opt.modules())
