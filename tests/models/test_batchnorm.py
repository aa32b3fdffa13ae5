"""BatchNorm3d on channels-last tensors with few channels (lateral.inference.batchnorm) equals nn.BatchNorm3d."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lateral.inference.batchnorm import SmallChannelBatchNorm3d, batch_norm_small_channels, uses_small_channel_path


def norm(channels: int = 8, momentum: float | None = 0.1, affine: bool = True) -> nn.BatchNorm3d:
    torch.manual_seed(0)
    bn = nn.BatchNorm3d(channels, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    return bn


def activations(channels: int = 8, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, 6, 10, 12, generator=gen) * 3 + torch.randn(1, channels, 1, 1, 1, generator=gen)
    return x.contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("channels", [8, 4, 2])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_step_matches_batchnorm3d(channels, momentum):
    """Compared with nn.BatchNorm3d in float64, which both the stock float32 kernel and this one approximate."""
    reference, bn = norm(channels, momentum).double(), norm(channels, momentum)
    grad = activations(channels, seed=2)
    for step in range(2):  # the second step checks the running statistics feed back correctly
        x = activations(channels, seed=10 + step)
        assert uses_small_channel_path(bn, x)
        x_ref, x_new = x.double().requires_grad_(), x.clone().requires_grad_()
        expected, got = reference(x_ref), batch_norm_small_channels(bn, x_new)
        expected.backward(grad.double())
        got.backward(grad)
        assert got.is_contiguous(memory_format=torch.channels_last_3d) and got.dtype == torch.float32
        close = {"atol": 1e-4, "rtol": 1e-4, "check_dtype": False}
        torch.testing.assert_close(got, expected, **close)
        torch.testing.assert_close(x_new.grad, x_ref.grad, **close)
        torch.testing.assert_close(bn.weight.grad, reference.weight.grad, **close)
        torch.testing.assert_close(bn.bias.grad, reference.bias.grad, **close)
        torch.testing.assert_close(bn.running_mean, reference.running_mean, **close)
        torch.testing.assert_close(bn.running_var, reference.running_var, **close)
        assert bn.num_batches_tracked == reference.num_batches_tracked == step + 1


def test_eval_mode_and_no_affine_match_batchnorm3d():
    for affine in (True, False):
        reference = norm(affine=affine)
        with torch.no_grad():
            reference.running_mean.uniform_(-1, 1)
            reference.running_var.uniform_(0.5, 2)
        bn = copy.deepcopy(reference).eval()
        reference.eval()
        x = activations()
        torch.testing.assert_close(batch_norm_small_channels(bn, x), reference(x), atol=1e-5, rtol=1e-5)
        train_ref, train_bn = copy.deepcopy(reference).train(), copy.deepcopy(reference).train()
        torch.testing.assert_close(batch_norm_small_channels(train_bn, x), train_ref(x), atol=1e-4, rtol=1e-4)


def test_bf16_activations_stay_bf16_and_close():
    reference, bn = norm(), norm()
    x = activations().bfloat16()
    got = batch_norm_small_channels(bn, x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference(x.float()), atol=4e-2, rtol=2e-2)


def test_which_inputs_take_the_small_channel_path():
    x = activations()
    assert uses_small_channel_path(norm(), x)
    assert not uses_small_channel_path(norm(), x.contiguous())  # the stock kernel is fast there
    assert not uses_small_channel_path(norm(16), activations(16))  # 16 channels vectorise well already
    assert not uses_small_channel_path(nn.SyncBatchNorm(8), x)
    assert not uses_small_channel_path(nn.BatchNorm3d(8, track_running_stats=False), x)
    assert not uses_small_channel_path(norm(), x.double())  # the stock kernel handles other dtypes
    odd = torch.randn(1, 8, 1, 3, 5).contiguous(memory_format=torch.channels_last_3d)  # 15 positions, 4 per row
    assert not uses_small_channel_path(norm(), odd)


def test_channels_last_training_swaps_it_into_conv_modules(monkeypatch):
    from lateral.inference import batchnorm
    from lateral.inference.workarounds import apply_training_workarounds
    from lateral.models.layers import ConvModule

    calls = []
    original = batchnorm.batch_norm_small_channels
    monkeypatch.setattr(batchnorm, "batch_norm_small_channels", lambda bn, x: calls.append(1) or original(bn, x))
    module = ConvModule(4, 8, 1, norm_cfg={"type": "BN3d"}, act_cfg={"type": "ReLU"}).train()
    x = torch.randn(2, 4, 4, 8, 8)
    plain = copy.deepcopy(module).to(memory_format=torch.channels_last_3d)
    assert type(module.bn) is nn.BatchNorm3d  # the model itself is plain PyTorch
    assert apply_training_workarounds(module, channels_last=False)["small_channel_batchnorms"] == 0
    assert apply_training_workarounds(module, channels_last=True)["small_channel_batchnorms"] == 1
    assert type(module.bn) is SmallChannelBatchNorm3d and list(module.state_dict()) == list(plain.state_dict())
    torch.testing.assert_close(module(x), plain(x), atol=1e-5, rtol=1e-5)
    assert not calls  # the default layout: the stock kernel
    module = module.to(memory_format=torch.channels_last_3d)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    got, expected = module(x), plain(x)
    assert calls == [1]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(module.bn.running_mean, plain.bn.running_mean, atol=1e-5, rtol=1e-5)
