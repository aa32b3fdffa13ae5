"""BatchNorm3d for channels-last-3d tensors with few channels (SlowFast's fast pathway: 8), on the CPU.

PyTorch's CPU BatchNorm kernel for channels-last input vectorises over the channels, and with 8 of them it falls
back to a slow path, over ten times slower than the same tensor in the contiguous layout (figures:
benchmarks/README.md, 'Measurements behind the code'). Converting layouts costs more than it saves.

Here the channels-last memory ``[N, T, H, W, C]`` is viewed, without a copy, as a 2-D ``[N*T*H*W / k, k*C]``
tensor with ``k*C = 32`` "virtual" channels, on which PyTorch's kernels are fast. Virtual channel ``j*C + c`` holds
every k-th position of channel ``c``, so per-channel statistics are combined from the k virtual ones, and the
normalisation and its gradient run as eval-mode BatchNorm calls on the view with the combined statistics repeated
k times. Results equal ``nn.BatchNorm3d`` to rounding, including the running-statistics update.

:class:`SmallChannelBatchNorm3d` is the ``nn.BatchNorm3d`` that takes this route; the engine swaps it in for
channels-last training (:func:`lateral.inference.workarounds.apply_training_workarounds`). The slow kernel was seen
with torch 2.14.1.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "SmallChannelBatchNorm3d",
    "batch_norm_on_view",
    "batch_norm_small_channels",
    "is_plain_batchnorm3d",
    "uses_small_channel_path",
]

VIRTUAL_CHANNELS = 32


def is_plain_batchnorm3d(bn: nn.Module) -> bool:
    """An ``nn.BatchNorm3d`` itself (or :class:`SmallChannelBatchNorm3d`; not SyncBatchNorm or another subclass) that
    tracks running statistics: the module whose forward :func:`batch_norm_on_view` reproduces."""
    if not isinstance(bn, nn.BatchNorm3d) or type(bn) not in (nn.BatchNorm3d, SmallChannelBatchNorm3d):
        return False
    return bn.track_running_stats and bn.running_mean is not None


def uses_small_channel_path(bn: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`batch_norm_small_channels` handles ``bn(x)``: a plain ``nn.BatchNorm3d`` on the CPU with
    running statistics, and ``x`` float32 or bfloat16, channels-last-3d, with 1, 2, 4 or 8 channels."""
    if not is_plain_batchnorm3d(bn):
        return False
    if x.device.type != "cpu" or x.dim() != 5 or x.shape[1] not in (1, 2, 4, 8):
        return False
    if x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if not x.is_contiguous(memory_format=torch.channels_last_3d) or x.is_contiguous():
        return False
    return (x.numel() // x.shape[1]) % (VIRTUAL_CHANNELS // x.shape[1]) == 0


def _eval_norm(
    x2: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    repeat: int,
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias per real channel on the [M', k*C] view (one pass)."""
    return torch.native_batch_norm(
        x2, weight.repeat(repeat), bias.repeat(repeat), mean.repeat(repeat), var.repeat(repeat), False, 0.0, eps
    )[0]


class _SmallChannelBatchNorm(torch.autograd.Function):
    """Training-mode batch norm on the [M', k*C] view; returns (out, batch mean, biased batch variance)."""

    @staticmethod
    def forward(ctx, x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, repeat: int):
        channels = x2.shape[1] // repeat
        _, mean_v, invstd_v = torch.native_batch_norm(x2, None, None, None, None, True, 0.0, eps)
        mean_v, invstd_v = mean_v.double(), invstd_v.double()
        square_v = invstd_v.pow(-2) - eps + mean_v.square()  # E[x^2] of each virtual channel
        mean = mean_v.view(repeat, channels).mean(0)
        var = (square_v.view(repeat, channels).mean(0) - mean.square()).clamp_min(0).float()
        mean = mean.float()
        out = _eval_norm(x2, weight, bias, mean, var, eps, repeat)
        ctx.save_for_backward(x2, weight, mean, var)
        ctx.eps, ctx.repeat = eps, repeat
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_mean, _grad_var):
        x2, weight, mean, var = ctx.saved_tensors
        eps, repeat = ctx.eps, ctx.repeat
        channels, count = mean.numel(), x2.shape[0] * repeat
        rep = [t.repeat(repeat) for t in (weight, mean, var)]
        # eval-mode backward: grad_out * weight * invstd, and per virtual channel sum(grad * xhat) and sum(grad)
        grad_eval, grad_weight_v, grad_bias_v = torch.ops.aten.native_batch_norm_backward(
            grad_out.contiguous(), x2, rep[0], rep[1], rep[2], None, None, False, eps, [True, True, True]
        )
        grad_weight = grad_weight_v.view(repeat, channels).sum(0)
        grad_bias = grad_bias_v.view(repeat, channels).sum(0)
        # training mode adds the statistics' dependence on x: grad_x = a*g + b*x + c per channel
        invstd = (var + eps).rsqrt()
        scale = weight * invstd
        slope = -scale * invstd * grad_weight / count
        offset = -scale * grad_bias / count - slope * mean
        ones, zeros = torch.ones_like(var) - eps, torch.zeros_like(mean)  # var + eps = 1: a plain affine map
        grad_x = grad_eval.add_(_eval_norm(x2, slope, offset, zeros, ones, eps, repeat))
        return grad_x, grad_weight, grad_bias, None, None


def batch_norm_small_channels(bn: nn.BatchNorm3d, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` for :func:`uses_small_channel_path` inputs, with the same outputs, gradients and running statistics.

    x: [N, C, T, H, W] channels-last-3d -> the same shape and layout, in x's dtype.
    """
    batch, channels, frames, height, width = x.shape
    repeat = VIRTUAL_CHANNELS // channels
    x2 = x.permute(0, 2, 3, 4, 1).reshape(-1, repeat * channels)  # a view of the channels-last memory
    out2 = batch_norm_on_view(bn, x2, repeat)
    return out2.view(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)


def batch_norm_on_view(bn: nn.BatchNorm3d, x2: torch.Tensor, repeat: int) -> torch.Tensor:
    """``bn`` over a [M', repeat * C] tensor whose column ``j * C + c`` holds values of channel ``c``.

    Statistics (and the running-statistics update, in training mode) are per real channel ``c``, over all rows and
    the ``repeat`` columns of that channel, exactly as ``bn`` over the unfolded tensor. Returns [M', repeat * C].
    """
    running_mean, running_var, num_batches_tracked = bn.running_mean, bn.running_var, bn.num_batches_tracked
    # a norm with running statistics (is_plain_batchnorm3d)
    assert running_mean is not None and running_var is not None and num_batches_tracked is not None
    channels = x2.shape[1] // repeat
    weight = bn.weight if bn.weight is not None else x2.new_ones(channels, dtype=torch.float32)
    bias = bn.bias if bn.bias is not None else x2.new_zeros(channels, dtype=torch.float32)
    if not bn.training:
        return torch.nn.functional.batch_norm(
            x2,
            running_mean.repeat(repeat),
            running_var.repeat(repeat),
            weight.repeat(repeat),
            bias.repeat(repeat),
            False,
            0.0,
            bn.eps,
        )
    out2, mean, var = _SmallChannelBatchNorm.apply(x2, weight, bias, bn.eps, repeat)
    with torch.no_grad():
        num_batches_tracked.add_(1)
        momentum = 1.0 / float(num_batches_tracked) if bn.momentum is None else bn.momentum
        count = x2.shape[0] * repeat
        running_mean.lerp_(mean, momentum)
        running_var.lerp_(var * (count / max(count - 1, 1)), momentum)
    return out2


class SmallChannelBatchNorm3d(nn.BatchNorm3d):
    """``nn.BatchNorm3d`` (same parameters, buffers and state-dict names) that runs :func:`batch_norm_small_channels`
    on the inputs where the stock CPU kernel is slow (:func:`uses_small_channel_path`), and the stock kernel elsewhere.

    Workaround for a slow kernel, seen with torch 2.14.1: CPU BatchNorm on channels-last-3d input with 8 channels
    was over ten times slower than in the contiguous layout (see the module docstring).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, T, H, W] -> the same shape, layout and dtype."""
        if uses_small_channel_path(self, x):
            return batch_norm_small_channels(self, x)
        return super().forward(x)
