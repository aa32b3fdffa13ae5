"""ConvModule in bf16 on the CPU: the convs oneDNN's bf16 kernels get wrong run in fp32 instead."""

import pytest
import torch
import torch.nn.functional as F

from lateral.models.layers import (
    ConvModule,
    bf16_conv3d_unsafe,
    fold_stem_weight,
    folded_stem_conv3d,
    is_foldable_stem,
    runs_bf16_on_cpu,
)


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


# ---------------------------------------------------------------------------------------- folded stem (training)


def _stem(bias: bool = False) -> torch.nn.Conv3d:
    torch.manual_seed(0)
    return torch.nn.Conv3d(3, 8, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=bias)


@pytest.mark.parametrize("frames", [8, 7])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_stem_matches_conv3d_with_gradients(frames, channels_last):
    conv = _stem(bias=True)
    x = torch.randn(2, 3, frames, 20, 20, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    expected = conv(x)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad((expected * grad).sum(), (conv.weight, conv.bias))
    got = folded_stem_conv3d(conv, x)
    got_grads = torch.autograd.grad((got * grad).sum(), (conv.weight, conv.bias))
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_fold_stem_weight_places_each_tap():
    weight = torch.arange(2 * 1 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 1, 3, 1, 1) + 1
    folded = fold_stem_weight(weight, fold=2)[:, :, 0, 0]  # [G * C_out, (kt + G - 1) * C_in] = [4, 4]
    expected = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 0], [0, 1, 2, 3], [0, 4, 5, 6]], dtype=torch.float32)
    assert torch.equal(folded, expected)


def test_which_convs_are_foldable_stems():
    assert is_foldable_stem(_stem())
    assert not is_foldable_stem(torch.nn.Conv3d(3, 64, (1, 7, 7)))  # temporal kernel 1: nothing to fold
    assert not is_foldable_stem(torch.nn.Conv3d(3, 8, (5, 7, 7), stride=(2, 2, 2)))
    assert not is_foldable_stem(torch.nn.Conv3d(64, 8, (5, 1, 1)))


def test_conv_module_folds_its_stem_only_under_cpu_bf16(monkeypatch):
    from lateral.models import layers

    calls = []
    original = layers.folded_stem_conv3d
    monkeypatch.setattr(layers, "folded_stem_conv3d", lambda conv, x: calls.append(x.shape) or original(conv, x))
    module = ConvModule(3, 8, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3))
    x = torch.randn(1, 3, 4, 16, 16)
    expected = module(x)
    assert not calls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module(x)
    assert len(calls) == 1
    torch.testing.assert_close(got.float(), expected, atol=5e-2, rtol=5e-2)
