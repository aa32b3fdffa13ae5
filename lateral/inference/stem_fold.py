"""Folding a video stem's output frames into channels: the shared math of the folded stem convs.

A video stem (SlowFast's fast pathway: 3 -> 8 channels, 5x7x7) has too few channels for oneDNN's vector kernels;
computing ``G`` consecutive output frames as ``G * C_out`` channels of one conv2d over stacked input frames gives it
a shape oneDNN handles well. Used by the inference copy (:mod:`lateral.inference.stem`) and by the training
workaround (:class:`lateral.inference.workarounds.FoldedStemConvModule`).

A leaf: nothing of lateral is imported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _triple

__all__ = [
    "MAX_STEM_CHANNELS",
    "STEM_FOLD",
    "fold_stem_weight",
    "folded_stem_conv2d",
    "folded_stem_conv3d",
    "framewise_pool_args",
    "is_foldable_stem",
    "runs_bf16_on_cpu",
    "stack_stem_frames",
    "stem_padding",
    "unfold_stem_frames",
]

MAX_STEM_CHANNELS = 4  # input channels of a conv treated as a video stem (RGB, or RGB + one more)
STEM_FOLD = 4  # output frames per conv2d call in a folded bf16 stem (measured best of 2, 4, 8, 16)


def runs_bf16_on_cpu(x: torch.Tensor) -> bool:
    """Whether a conv on ``x`` would run in bf16 on the CPU: ``x`` is bf16, or CPU autocast to bf16 is on."""
    if x.device.type != "cpu":
        return False
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def is_foldable_stem(conv: nn.Module) -> bool:
    """A video stem that :func:`folded_stem_conv3d` computes: an ``nn.Conv3d`` with at most 4 input channels, a
    temporal kernel > 1, temporal stride 1, no groups and no dilation (SlowFast's fast pathway stem, 3 -> 8, 5x7x7)."""
    return (
        isinstance(conv, nn.Conv3d)
        and conv.in_channels <= MAX_STEM_CHANNELS
        and conv.kernel_size[0] > 1
        and conv.stride[0] == 1
        and conv.groups == 1
        and conv.dilation == (1, 1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def stem_padding(conv: nn.Conv3d) -> tuple[int, ...]:
    """A stem conv's padding: a tuple, as :func:`is_foldable_stem` refuses ``padding='same'`` or ``'valid'``."""
    assert not isinstance(conv.padding, str), f"a folded stem needs numeric padding, got {conv.padding!r}"
    return conv.padding


def fold_stem_weight(weight: torch.Tensor, fold: int) -> torch.Tensor:
    """The conv2d weight that computes ``fold`` output frames of a stem conv3d at once (differentiable).

    Args:
        weight: [C_out, C_in, kt, kh, kw].
        fold: output frames per group, G.

    Returns:
        [G * C_out, C_in * (kt + G - 1), kh, kw]: output channel ``j * C_out + o`` (output frame j of the group)
        reads input channel ``c * (kt + G - 1) + f`` (channel c of frame f of the group's ``kt + G - 1`` input
        frames, the order :func:`stack_stem_frames` stacks them in) with weight ``weight[o, c, f - j]``, and zero
        where ``f - j`` is outside the kernel.
    """
    out_channels, in_channels, kernel_t, kernel_h, kernel_w = weight.shape
    window = kernel_t + fold - 1
    shifted = torch.stack([F.pad(weight, (0, 0, 0, 0, j, window - kernel_t - j)) for j in range(fold)])
    return shifted.reshape(fold * out_channels, in_channels * window, kernel_h, kernel_w)


def stack_stem_frames(x: torch.Tensor, kernel_t: int, pad_t: int, fold: int) -> torch.Tensor:
    """The input of a folded stem: x [N, C, T, H, W] (any layout) -> [N * groups, C * window, H, W] channels-last,
    where group g holds input frames ``g * G - pad_t .. g * G - pad_t + window - 1`` (zeros outside the clip),
    ``window = kt + G - 1`` and ``groups = ceil(T' / G)``; differentiable.

    The frames are first moved innermost ([N, H, W, C, T], one transposing copy), so that gathering each group's
    window copies runs of ``window`` contiguous values. Against stacking [C, H, W] planes and converting them to
    channels-last, the bf16 fast stem of SlowFast (training, forward + backward) took a quarter less time.
    """
    batch, channels, frames, height, width = x.shape
    frames_out = frames + 2 * pad_t - kernel_t + 1
    groups = -(-frames_out // fold)
    window = kernel_t + fold - 1
    padded_frames = (groups - 1) * fold + window
    frames_last = F.pad(x.permute(0, 3, 4, 1, 2), (pad_t, padded_frames - frames - pad_t))  # [N, H, W, C, T_pad]
    windows = frames_last.unfold(4, window, fold)  # [N, H, W, C, groups, window]
    stacked = windows.permute(0, 4, 1, 2, 3, 5).reshape(batch * groups, height, width, channels * window)
    return stacked.permute(0, 3, 1, 2)


def folded_stem_conv3d(conv: nn.Conv3d, x: torch.Tensor, fold: int = STEM_FOLD) -> torch.Tensor:
    """``conv(x)`` for a stem (:func:`is_foldable_stem`) as one conv2d over stacked frames; differentiable.

    oneDNN's bf16 conv3d is slow for a stem's 3 input and 8 output channels: SlowFast's fast stem took almost a fifth of
    a bf16 training step on an AMX CPU. Here the ``kt + G - 1`` input frames that ``G`` consecutive output frames read
    are stacked into channels and a conv2d with :func:`fold_stem_weight` computes the G frames' ``G * C_out`` channels
    together, at ``(kt + G - 1) / kt`` times the multiply-adds. The result equals ``conv(x)`` to rounding.

    x: [N, C_in, T, H, W] -> [N, C_out, T', H', W'] in x's memory format (channels-last-3d or contiguous).
    """
    frames_out = x.shape[2] + 2 * stem_padding(conv)[0] - conv.kernel_size[0] + 1
    channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    folded = folded_stem_conv2d(conv, x, fold)
    return unfold_stem_frames(folded, x.shape[0], conv.out_channels, fold, frames_out, channels_last)


def folded_stem_conv2d(conv: nn.Conv3d, x: torch.Tensor, fold: int) -> torch.Tensor:
    """The folded conv: x [N, C_in, T, H, W] -> [N * ceil(T' / G), G * C_out, H', W'] channels-last, where channel
    ``j * C_out + o`` of group g is output channel o at frame ``g * G + j``."""
    if runs_bf16_on_cpu(x) and x.dtype == torch.float32:
        x = x.to(torch.bfloat16)  # the conv2d would cast anyway; stacking bf16 frames moves half the bytes
    padding = stem_padding(conv)
    stacked = stack_stem_frames(x, conv.kernel_size[0], padding[0], fold)
    weight = fold_stem_weight(conv.weight, fold).contiguous(memory_format=torch.channels_last)  # NHWC output
    bias = None if conv.bias is None else conv.bias.repeat(fold)
    return F.conv2d(stacked, weight, bias, conv.stride[1:], padding[1:])


def unfold_stem_frames(
    folded: torch.Tensor, batch: int, out_channels: int, fold: int, frames_out: int, channels_last: bool
) -> torch.Tensor:
    """[N * groups, G * C_out, H, W] (channels-last) -> [N, C_out, T', H, W], channels-last-3d or contiguous."""
    groups = folded.shape[0] // batch
    height, width = folded.shape[-2:]
    out = folded.permute(0, 2, 3, 1).reshape(batch, groups, height, width, fold, out_channels)
    out = out.permute(0, 1, 4, 2, 3, 5).reshape(batch, groups * fold, height, width, out_channels)
    out = out[:, :frames_out].permute(0, 4, 1, 2, 3)  # [N, C_out, T', H, W], channels-last-3d strides
    return out.contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)


def framewise_pool_args(pool: nn.Module | None) -> dict | None:
    """``F.max_pool2d`` arguments of an ``nn.MaxPool3d`` that pools each frame on its own (kernel and stride 1 over
    time, no padding over time), or None for any other pool."""
    if type(pool) is not nn.MaxPool3d or pool.return_indices:
        return None
    kernel, stride = _triple(pool.kernel_size), _triple(pool.stride or pool.kernel_size)
    padding, dilation = _triple(pool.padding), _triple(pool.dilation)
    if kernel[0] != 1 or stride[0] != 1 or padding[0] != 0 or dilation != (1, 1, 1):
        return None
    return {"kernel_size": kernel[1:], "stride": stride[1:], "padding": padding[1:], "ceil_mode": pool.ceil_mode}
