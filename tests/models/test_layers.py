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


def _stem_module() -> ConvModule:
    torch.manual_seed(0)
    stem = ConvModule(3, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3), norm_cfg={"type": "BN3d"}, act_cfg={"type": "ReLU"})
    with torch.no_grad():
        stem.bn.weight.uniform_(0.5, 1.5)
        stem.bn.bias.normal_()
    return stem.train()


@pytest.mark.parametrize("channels_last", [True, False])
def test_stem_block_in_the_folded_layout_matches_conv_norm_relu_pool(channels_last):
    import copy

    from lateral.models.layers import _stem_block_folded, framewise_pool_args

    stem = _stem_module()
    reference = copy.deepcopy(stem)
    pool = torch.nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
    x = torch.randn(2, 3, 8, 24, 24, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    expected = pool(reference(x))
    got = _stem_block_folded(stem, framewise_pool_args(pool), x, fold=4)  # fp32: the same math, checkable to 1e-4
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(expected)
    (expected * grad).sum().backward()
    (got * grad).sum().backward()
    for name in ("conv.weight", "bn.weight", "bn.bias"):
        torch.testing.assert_close(stem.get_parameter(name).grad, reference.get_parameter(name).grad,
                                   atol=1e-4, rtol=1e-4, msg=name)
    torch.testing.assert_close(stem.bn.running_mean, reference.bn.running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stem.bn.running_var, reference.bn.running_var, atol=1e-5, rtol=1e-5)


def test_stem_block_runs_folded_only_under_cpu_bf16_and_when_it_qualifies():
    from lateral.models.layers import folded_stem_block

    stem, pool = _stem_module(), torch.nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
    x = torch.randn(1, 3, 8, 16, 16)
    assert folded_stem_block(stem, pool, x) is None  # fp32: the plain modules are as fast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = folded_stem_block(stem, pool, x)
        assert got is not None and got.shape == (1, 8, 8, 4, 4)
        assert folded_stem_block(stem, pool, x[:, :, :6]) is None  # 6 output frames: not a multiple of 4
        assert folded_stem_block(stem, torch.nn.MaxPool3d((3, 3, 3), 2, 1), x) is None  # pools across frames
        reference = pool(_stem_module()(x))
    torch.testing.assert_close(got.float(), reference.float(), atol=6e-2, rtol=5e-2)


def test_slowfast_forward_uses_the_pathways_stem_method(monkeypatch):
    from lateral.models.resnet3d import ResNet3d

    calls = []
    original = ResNet3d.forward_stem
    monkeypatch.setattr(ResNet3d, "forward_stem", lambda self, x, pool=None: calls.append(pool) or original(self, x, pool))
    import lateral
    from test_export import thin_config

    model = lateral.build_model(thin_config()).backbone
    model(torch.randn(1, 3, 8, 32, 32))
    assert calls == [True, True]
