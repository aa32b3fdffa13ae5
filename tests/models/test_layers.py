"""ConvModule in bf16 on the CPU: the convs oneDNN's bf16 kernels get wrong run in fp32 instead."""

import pytest
import torch
import torch.nn.functional as F

from lateral.models.layers import ConvModule, bf16_conv3d_unsafe, runs_bf16_on_cpu


@pytest.mark.parametrize(
    "kernel, stride, unsafe",
    [
        ((5, 1, 1), (8, 1, 1), True),  # SlowFast 4x16 lateral (alpha 8)
        ((7, 1, 1), (16, 1, 1), True),
        ((2, 1, 1), (3, 1, 1), True),
        ((1, 3, 3), (1, 4, 4), True),
        ((5, 1, 1), (4, 1, 1), False),  # 8x8 lateral (alpha 4): stride below the kernel
        ((5, 1, 1), (5, 1, 1), False),
        ((1, 1, 1), (1, 2, 2), False),  # strided 1x1 downsample
        ((1, 7, 7), (1, 2, 2), False),  # stem
    ],
)
def test_unsafe_shapes_are_strides_above_a_kernel_larger_than_one(kernel, stride, unsafe):
    assert bf16_conv3d_unsafe(kernel, stride) is unsafe


def test_runs_bf16_on_cpu_sees_dtype_and_autocast():
    x = torch.zeros(1, 2, 2, 2, 2)
    assert not runs_bf16_on_cpu(x)
    assert runs_bf16_on_cpu(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert runs_bf16_on_cpu(x)


def _lateral_conv() -> ConvModule:
    torch.manual_seed(0)
    # the 4x16 SlowFast's layer2 lateral at a small spatial size: the shape that gave NaN / heap corruption
    return ConvModule(64, 128, (5, 1, 1), stride=(8, 1, 1), padding=(2, 0, 0)).eval()


def test_lateral_conv_under_bf16_autocast_matches_fp32():
    conv = _lateral_conv()
    x = torch.randn(1, 64, 32, 8, 8)
    with torch.no_grad():
        expected = F.conv3d(x.double(), conv.conv.weight.double(), None, (8, 1, 1), (2, 0, 0)).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = conv(x)
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    assert torch.isfinite(got.float()).all()
    # bf16 rounding of the result only: the conv itself ran in fp32
    assert (got.float() - expected).abs().max().item() <= 1e-2 * expected.abs().max().item()


def test_lateral_conv_with_bf16_weights_and_input_matches_fp32_and_trains():
    conv = _lateral_conv()
    x = torch.randn(1, 64, 32, 8, 8)
    expected = F.conv3d(x, conv.conv.weight, None, (8, 1, 1), (2, 0, 0))
    conv = conv.bfloat16()
    x_bf16 = x.bfloat16().requires_grad_()
    got = conv(x_bf16)
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max().item() <= 2e-2 * expected.abs().max().item()
    got.float().sum().backward()
    assert x_bf16.grad is not None and x_bf16.grad.dtype == torch.bfloat16
    assert torch.isfinite(conv.conv.weight.grad.float()).all() and conv.conv.weight.grad.abs().sum() > 0
