"""CPU kernel workarounds, swapped into a plain model from outside.

The model (``ConvModule``: conv -> norm -> activation; ``ResNet3d.forward_stem``: stem -> pool) is ordinary
PyTorch. Each workaround here is a subclass of the module it replaces, holding the same parameters and buffers
under the same state-dict names, that computes the same values by a route around a wrong or slow kernel of the
PyTorch release named in its comment:

- :class:`Fp32FallbackConv3d`: oneDNN's bf16 conv3d is wrong for a stride above a kernel size > 1 (torch 2.14.1).
- :class:`FoldedStemConvModule`: oneDNN's bf16 conv3d is slow for a 3 -> 8 channel video stem (torch 2.14.1).
- :class:`~lateral.inference.batchnorm.SmallChannelBatchNorm3d`: CPU BatchNorm is slow on channels-last input with
  8 channels (torch 2.14.1).

They are put in place by one call, :func:`apply_training_workarounds`, which the engine makes for ``--amp bf16`` and
``channels_last`` training and for ``lateral test --amp bf16``, and which :func:`lateral.optimize` makes for a bf16
copy that runs plain convs (compiled, or without oneDNN's direct calls). When the workaround is not needed for an
input (fp32, another device, another layout) each module runs its parent's forward.
"""

from __future__ import annotations

from typing import TypeGuard, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from lateral.inference.batchnorm import SmallChannelBatchNorm3d, batch_norm_on_view, is_plain_batchnorm3d
from lateral.inference.onednn import bf16_conv3d_unsafe
from lateral.inference.stem_fold import (
    STEM_FOLD,
    folded_stem_conv2d,
    folded_stem_conv3d,
    framewise_pool_args,
    is_foldable_stem,
    runs_bf16_on_cpu,
    stem_padding,
    unfold_stem_frames,
)
from lateral.models.layers import ConvModule
from lateral.models.resnet3d import ResNet3d

__all__ = [
    "FoldedStemConvModule",
    "Fp32FallbackConv3d",
    "SmallChannelBatchNorm3d",
    "apply_training_workarounds",
    "use_folded_stem_conv_modules",
    "use_fp32_fallback_convs",
    "use_small_channel_batchnorms",
]


_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


def _three(size: tuple[int, ...]) -> tuple[int, int, int]:
    """An ``nn.Conv3d`` size: three ints (torch types the attribute as its ``_ConvNd`` base's tuple[int, ...])."""
    t, h, w = size
    return t, h, w


def _adopt(new: _ModuleT, old: nn.Module) -> _ModuleT:
    """Give ``new`` (built on the meta device) ``old``'s own parameters, buffers and mode: the same tensors, so an
    optimizer built before or after the swap, and the state dict, see no change."""
    for name, param in old.named_parameters(recurse=False):
        setattr(new, name, param)
    for name, buffer in old.named_buffers(recurse=False):
        setattr(new, name, buffer)
    return new.train(old.training)


class Fp32FallbackConv3d(nn.Conv3d):
    """``nn.Conv3d`` that computes in float32 whenever it would run in bf16 on the CPU, and returns bf16 as the bf16
    conv would have.

    Workaround for a oneDNN bug seen with torch 2.14.1 (oneDNN 3.12) on CPUs with native bf16 (AVX-512 BF16 / AMX):
    bf16 conv3d with a stride larger than a kernel size > 1 returns garbage or NaN, or corrupts the heap
    (:func:`~lateral.inference.onednn.bf16_conv3d_unsafe`; SlowFast's alpha-8 lateral convs). Put only on those convs.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> Fp32FallbackConv3d:
        new = cls(
            conv.in_channels,
            conv.out_channels,
            _three(conv.kernel_size),
            _three(conv.stride),
            conv.padding if isinstance(conv.padding, str) else _three(conv.padding),
            _three(conv.dilation),
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        return _adopt(new, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, T, H, W] -> [N, C_out, T', H', W']."""
        if not runs_bf16_on_cpu(x):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast("cpu", enabled=False):
            out = self._conv_forward(x.float(), self.weight.float(), bias)
        return out.to(torch.bfloat16)


class FoldedStemConvModule(ConvModule):
    """A video stem's ``ConvModule`` (conv, norm, activation; optionally the pathway's frame-wise max-pool after it)
    that, when it runs in bf16 on the CPU, computes several output frames per conv2d call.

    Workaround for a slow kernel seen with torch 2.14.1 on an AMX CPU: oneDNN's bf16 conv3d for SlowFast's fast stem
    (3 -> 8 channels, 5x7x7) took almost a fifth of a bf16 training step.
    :func:`~lateral.inference.stem_fold.folded_stem_conv3d` stacks the input frames of 4 output frames into channels
    instead. When the norm is a plain BatchNorm3d (or none), the activation a ReLU (or none) and the output frames a
    multiple of 4, the norm, the ReLU and the pool also run in that folded layout ([N * T / 4, H, W, 4 * C_out], 32
    channels for the fast stem, which fill a vector register; the norm's statistics are still per channel,
    :func:`~lateral.inference.batchnorm.batch_norm_on_view`) and frames are unfolded after the pool, at a quarter of the
    size. Same outputs, gradients and running statistics to rounding. The children (``conv``, ``bn``, ``activate``) are
    the stem's own; a pool has no state.

    Args:
        stem: the ``ConvModule`` whose conv is a foldable stem (:func:`~lateral.inference.stem_fold.is_foldable_stem`).
        pool: the max-pool that always follows the stem, taken over (the caller replaces it by ``nn.Identity``).
    """

    conv: nn.Conv3d  # a foldable stem (use_folded_stem_conv_modules only wraps those)

    def __init__(self, stem: ConvModule, pool: nn.Module | None = None):
        nn.Module.__init__(self)  # not ConvModule.__init__: the stem's modules are kept, not rebuilt from configs
        assert isinstance(stem.conv, nn.Conv3d), f"a stem's conv is an nn.Conv3d, got {type(stem.conv).__name__}"
        self.conv, self.bn, self.activate = stem.conv, stem.bn, stem.activate
        self.pool = pool
        self.train(stem.training)

    def folds_block(self, x: torch.Tensor) -> bool:
        """Whether conv, norm, activation and pool all run in the folded layout for ``x`` (see the class docstring)."""
        if self.pool is not None and framewise_pool_args(self.pool) is None:
            return False
        if self.bn is not None and not is_plain_batchnorm3d(self.bn):
            return False
        if self.activate is not None and type(self.activate) is not nn.ReLU:
            return False
        frames_out = x.shape[2] + 2 * stem_padding(self.conv)[0] - self.conv.kernel_size[0] + 1
        return frames_out % STEM_FOLD == 0  # otherwise padded groups would enter the norm's statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, T, H, W] -> [N, C_out, T', H', W'] (pooled if this module holds the pool)."""
        if runs_bf16_on_cpu(x) and is_foldable_stem(self.conv):
            if self.folds_block(x):
                return self.forward_folded(x)
            x = folded_stem_conv3d(self.conv, x)
        else:
            x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x if self.pool is None else self.pool(x)

    def forward_folded(self, x: torch.Tensor, fold: int = STEM_FOLD) -> torch.Tensor:
        """The whole block in the folded layout, in any dtype (:meth:`folds_block` must hold; T' divisible by
        ``fold``): x [N, C_in, T, H, W] -> [N, C_out, T', H'', W''] in x's memory format."""
        conv = self.conv
        frames_out = x.shape[2] + 2 * stem_padding(conv)[0] - conv.kernel_size[0] + 1
        channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
        folded = folded_stem_conv2d(conv, x, fold)  # [N * T' / G, G * C_out, H', W'] channels-last
        groups, folded_channels, height, width = folded.shape
        if self.bn is not None:
            assert isinstance(self.bn, nn.BatchNorm3d)  # a plain BatchNorm3d (folds_block)
            rows = folded.permute(0, 2, 3, 1).reshape(-1, folded_channels)  # view: column j * C_out + o
            folded = batch_norm_on_view(self.bn, rows, fold)
            folded = folded.view(groups, height, width, folded_channels).permute(0, 3, 1, 2)
        if self.activate is not None:
            folded = torch.relu(folded)
        if self.pool is not None:
            pool_args = framewise_pool_args(self.pool)
            assert pool_args is not None  # a frame-wise pool (folds_block)
            folded = F.max_pool2d(folded, **pool_args)
        return unfold_stem_frames(folded, x.shape[0], conv.out_channels, fold, frames_out, channels_last)


def _stem_qualifies(stem: object) -> TypeGuard[ConvModule]:
    if type(stem) is not ConvModule:
        return False
    conv = stem.conv
    return (
        type(conv) is nn.Conv3d
        and is_foldable_stem(conv)
        and not bf16_conv3d_unsafe(conv.kernel_size, conv.stride)  # those get Fp32FallbackConv3d
    )


def use_folded_stem_conv_modules(model: nn.Module) -> int:
    """Replace, in place, every video-stem ``ConvModule`` of ``model`` by a :class:`FoldedStemConvModule`.

    A ``ResNet3d`` pathway's stem (``conv1``) also takes over the pathway's frame-wise max-pool when ``with_pool1``
    is set (``maxpool`` becomes ``nn.Identity``), as :func:`lateral.inference.stem.use_folded_stems` does for the
    inference copy: ``ResNet3d.forward`` and ``ResNet3dSlowFast.forward`` then compute the same; a direct
    ``forward_stem(x, pool=False)`` would pool.

    Returns:
        The number of stems replaced.
    """
    replaced = 0
    for pathway in [m for m in model.modules() if isinstance(m, ResNet3d)]:
        stem = getattr(pathway, "conv1", None)
        if not _stem_qualifies(stem):
            continue
        pool = getattr(pathway, "maxpool", None)
        if pathway.with_pool1 and type(pool) is nn.MaxPool3d and framewise_pool_args(pool) is not None:
            pathway.conv1, pathway.maxpool = FoldedStemConvModule(stem, pool), nn.Identity()
        else:
            pathway.conv1 = FoldedStemConvModule(stem)
        replaced += 1
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if _stem_qualifies(child):
                setattr(module, name, FoldedStemConvModule(child))
                replaced += 1
    return replaced


def use_fp32_fallback_convs(model: nn.Module) -> int:
    """Replace, in place, the conv of every ``ConvModule`` that oneDNN's bf16 conv3d gets wrong
    (:func:`~lateral.inference.onednn.bf16_conv3d_unsafe`) by an :class:`Fp32FallbackConv3d`; return how many."""
    replaced = 0
    for module in model.modules():
        conv = getattr(module, "conv", None)
        if (
            isinstance(module, ConvModule)
            and type(conv) is nn.Conv3d
            and bf16_conv3d_unsafe(conv.kernel_size, conv.stride)
        ):
            module.conv = Fp32FallbackConv3d.from_conv(conv)
            replaced += 1
    return replaced


def use_small_channel_batchnorms(model: nn.Module) -> int:
    """Replace, in place, the ``nn.BatchNorm3d`` of every ``ConvModule`` with 1, 2, 4 or 8 channels (the counts
    :func:`~lateral.inference.batchnorm.uses_small_channel_path` handles) by a :class:`SmallChannelBatchNorm3d`."""
    replaced = 0
    for module in model.modules():
        bn = getattr(module, "bn", None)
        if isinstance(module, ConvModule) and type(bn) is nn.BatchNorm3d and bn.num_features in (1, 2, 4, 8):
            new = SmallChannelBatchNorm3d(
                bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta"
            )
            module.bn = _adopt(new, bn)
            replaced += 1
    return replaced


def apply_training_workarounds(
    model: nn.Module, amp: torch.dtype | str | None = None, channels_last: bool = False
) -> dict[str, int]:
    """Swap, in place, the CPU workarounds that training (or evaluation) of ``model`` with ``amp`` and
    ``channels_last`` needs; nothing for a model on another device. Idempotent; the state dict is unchanged.

    Args:
        model: a recognizer or backbone.
        amp: the autocast dtype (or 'bf16' / 'fp16' / None): bf16 swaps in :class:`Fp32FallbackConv3d` and
            :class:`FoldedStemConvModule`.
        channels_last: activations run channels-last-3d: swaps in ``SmallChannelBatchNorm3d``.

    Returns:
        How many modules of each workaround were swapped in.
    """
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    bf16 = amp in (torch.bfloat16, "bf16")
    counts = {"fp32_fallback_convs": 0, "folded_stems": 0, "small_channel_batchnorms": 0}
    if device.type != "cpu":
        return counts
    if bf16:
        counts["fp32_fallback_convs"] = use_fp32_fallback_convs(model)
        counts["folded_stems"] = use_folded_stem_conv_modules(model)
    if channels_last:
        counts["small_channel_batchnorms"] = use_small_channel_batchnorms(model)
    return counts
