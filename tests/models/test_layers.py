"""ConvModule is plain conv -> norm -> activation; the CPU bf16 workarounds swapped into it
(lateral.inference.workarounds) give the same outputs, gradients and running statistics."""

import pytest
import torch
import torch.nn.functional as F

from lateral.inference.onednn import bf16_conv3d_unsafe
from lateral.inference.stem_fold import fold_stem_weight, folded_stem_conv3d, is_foldable_stem, runs_bf16_on_cpu
from lateral.inference.workarounds import (
    FoldedStemConvModule,
    Fp32FallbackConv3d,
    apply_training_workarounds,
)
from lateral.models.layers import ConvModule


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
    conv = ConvModule(64, 128, (5, 1, 1), stride=(8, 1, 1), padding=(2, 0, 0)).eval()
    assert type(conv.conv) is torch.nn.Conv3d  # the model itself is plain PyTorch
    keys = list(conv.state_dict())
    assert apply_training_workarounds(conv, amp="bf16")["fp32_fallback_convs"] == 1
    assert type(conv.conv) is Fp32FallbackConv3d and list(conv.state_dict()) == keys
    return conv


def test_workarounds_are_swapped_in_only_when_asked_and_only_where_needed():
    conv = ConvModule(64, 128, (5, 1, 1), stride=(8, 1, 1), padding=(2, 0, 0))
    safe = ConvModule(64, 128, (5, 1, 1), stride=(4, 1, 1), padding=(2, 0, 0))
    for module in (conv, safe):
        assert apply_training_workarounds(module, amp=None, channels_last=False)["fp32_fallback_convs"] == 0
        assert type(module.conv) is torch.nn.Conv3d
    weight = conv.conv.weight
    assert apply_training_workarounds(conv, amp=torch.bfloat16)["fp32_fallback_convs"] == 1
    assert apply_training_workarounds(conv, amp=torch.bfloat16)["fp32_fallback_convs"] == 0  # idempotent
    assert conv.conv.weight is weight  # the same parameter: optimizers and state dicts see no change
    assert apply_training_workarounds(safe, amp="bf16")["fp32_fallback_convs"] == 0


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


def test_swapped_stem_folds_its_conv_only_under_cpu_bf16(monkeypatch):
    from lateral.inference import workarounds

    calls = []
    original = workarounds.folded_stem_conv3d
    monkeypatch.setattr(workarounds, "folded_stem_conv3d", lambda conv, x: calls.append(x.shape) or original(conv, x))
    plain = ConvModule(3, 8, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3))
    module = FoldedStemConvModule(plain)
    assert list(module.state_dict()) == list(plain.state_dict())
    x = torch.randn(1, 3, 4, 16, 16)
    expected = plain(x)
    torch.testing.assert_close(module(x), expected, atol=0, rtol=0)
    assert not calls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module(x)
        assert not calls  # no norm: the whole block runs folded
        module.activate = torch.nn.GELU()
        module(x)  # an activation the folded block does not run: only the conv is folded
    assert len(calls) == 1
    torch.testing.assert_close(got.float(), expected, atol=5e-2, rtol=5e-2)


def _stem_module() -> ConvModule:
    torch.manual_seed(0)
    stem = ConvModule(3, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3), norm_cfg={"type": "BN3d"}, act_cfg={"type": "ReLU"})
    with torch.no_grad():
        stem.bn.weight.uniform_(0.5, 1.5)
        stem.bn.bias.normal_()
    return stem.train()


def _pool() -> torch.nn.MaxPool3d:
    return torch.nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))


@pytest.mark.parametrize("channels_last", [True, False])
def test_stem_block_in_the_folded_layout_matches_conv_norm_relu_pool(channels_last):
    import copy

    stem = _stem_module()
    reference = copy.deepcopy(stem)
    pool = _pool()
    x = torch.randn(2, 3, 8, 24, 24, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    expected = pool(reference(x))
    got = FoldedStemConvModule(stem, pool).forward_folded(x, fold=4)  # fp32: the same math, checkable to 1e-4
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(expected)
    (expected * grad).sum().backward()
    (got * grad).sum().backward()
    for name in ("conv.weight", "bn.weight", "bn.bias"):
        torch.testing.assert_close(
            stem.get_parameter(name).grad, reference.get_parameter(name).grad, atol=1e-4, rtol=1e-4, msg=name
        )
    torch.testing.assert_close(stem.bn.running_mean, reference.bn.running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stem.bn.running_var, reference.bn.running_var, atol=1e-5, rtol=1e-5)


def test_stem_block_runs_folded_only_under_cpu_bf16_and_when_it_qualifies(monkeypatch):
    calls = []
    original = FoldedStemConvModule.forward_folded
    monkeypatch.setattr(
        FoldedStemConvModule,
        "forward_folded",
        lambda self, x, fold=4: calls.append(x.shape[2]) or original(self, x, fold),
    )
    stem = FoldedStemConvModule(_stem_module(), _pool())
    x = torch.randn(1, 3, 8, 16, 16)
    stem(x)
    assert not calls  # fp32: the plain modules are as fast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = stem(x)
        assert calls == [8] and got.shape == (1, 8, 8, 4, 4)
        stem(x[:, :, :6])  # 6 output frames: not a multiple of 4
        FoldedStemConvModule(_stem_module(), torch.nn.MaxPool3d((3, 3, 3), 2, 1))(x)  # pools across frames
        assert calls == [8]
        reference = _pool()(_stem_module()(x))
    torch.testing.assert_close(got.float(), reference.float(), atol=6e-2, rtol=5e-2)


def test_training_workarounds_take_over_the_stems_and_keep_outputs_grads_and_statistics():
    import copy

    import lateral
    from inference.test_export import thin_config

    torch.manual_seed(0)
    plain = lateral.build_model(thin_config()).backbone.train()
    swapped = copy.deepcopy(plain)
    counts = apply_training_workarounds(swapped, amp="bf16", channels_last=True)
    assert counts["folded_stems"] >= 1 and counts["small_channel_batchnorms"] >= 1
    assert type(swapped.fast_path.conv1) is FoldedStemConvModule and type(plain.fast_path.conv1) is ConvModule
    assert type(swapped.fast_path.maxpool) is torch.nn.Identity  # taken over by the folded stem
    assert list(swapped.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 8, 32, 32).contiguous(memory_format=torch.channels_last_3d)
    expected, got = plain(x), swapped(x)  # fp32: every workaround runs its parent's math
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    weights = [torch.randn_like(t) for t in expected]
    sum((t * w).sum() for t, w in zip(expected, weights)).backward()
    sum((t * w).sum() for t, w in zip(got, weights)).backward()
    for (name, a), b in zip(swapped.named_parameters(), plain.parameters()):
        scale = b.grad.abs().max().item()
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4 * scale, rtol=1e-4, msg=name)
    for (name, a), b in zip(swapped.named_buffers(), plain.buffers()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
