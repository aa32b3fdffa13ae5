"""The oneDNN conv wrapper and weight versioning shared by every fused conv of the inference copy.

A leaf: nothing of lateral is imported here, so :mod:`~lateral.inference.winograd`,
:mod:`~lateral.inference.temporal_winograd`, :mod:`~lateral.inference.stem` and
:mod:`~lateral.inference.optimization` all build on it without importing each other in a circle.

ATen picks its own convolution kernel per call, and for batch-1 video it often picks ``slow_conv3d`` (im2col and an
fp32 GEMM, several times slower than oneDNN on these shapes); :class:`OneDnnConv` calls oneDNN directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

__all__ = ["OneDnnConv", "bf16_conv3d_unsafe", "frames_inside", "weight_version"]


def bf16_conv3d_unsafe(kernel_size: Sequence[int], stride: Sequence[int]) -> bool:
    """Whether oneDNN's bf16 conv3d on CPU may compute this conv wrongly: a stride larger than a kernel size > 1.

    With torch 2.14.1 (oneDNN 3.12) on CPUs with native bf16 (AVX-512 BF16 / AMX), such convs return garbage or
    NaN, or corrupt the heap, depending on the shape: SlowFast's lateral convs (kernel 5 over time, stride alpha = 8)
    among them. Equal or smaller strides, 1-sized kernels and 2D convs were all correct in the same sweep, so only
    these convs are run in float32 (they are about 1.5 % of the seed SlowFast's multiply-adds).
    """
    return any(1 < k < s for k, s in zip(kernel_size, stride))


class ConvLike(Protocol):
    """What :class:`OneDnnConv` reads from the conv it replaces: an ``nn.Conv1d/2d/3d`` or another OneDnnConv."""

    @property
    def weight(self) -> torch.Tensor: ...
    @property
    def bias(self) -> torch.Tensor | None: ...
    @property
    def in_channels(self) -> int: ...
    @property
    def out_channels(self) -> int: ...
    @property
    def kernel_size(self) -> Sequence[int]: ...
    @property
    def stride(self) -> Sequence[int]: ...
    @property
    def padding(self) -> Sequence[int] | str: ...
    @property
    def dilation(self) -> Sequence[int]: ...
    @property
    def groups(self) -> int: ...


class OneDnnConv(nn.Module):
    """A folded conv that always runs oneDNN, with an optional fused ReLU (a oneDNN post-op).

    ATen picks its own convolution kernel per call, and for batch-1 video it often picks ``slow_conv3d`` (im2col and
    an fp32 GEMM, several times slower than oneDNN on these shapes). This module keeps the
    conv's ``weight`` and ``bias`` (same state-dict names) and calls oneDNN directly.

    Args:
        conv: the ``nn.Conv1d/2d/3d`` to run (zero padding given as ints).
        relu: apply ReLU to the output inside the same kernel.
    """

    def __init__(self, conv: ConvLike, relu: bool = False):
        super().__init__()
        if isinstance(conv.padding, str):
            raise TypeError(f"OneDnnConv needs the padding as ints, got padding='{conv.padding}'")
        self.weight = conv.weight
        self.bias: torch.Tensor
        if conv.bias is None:
            self.bias = nn.Parameter(conv.weight.new_zeros(conv.out_channels), requires_grad=False)
        else:
            self.bias = conv.bias
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size: Sequence[int] = conv.kernel_size
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = relu
        # bf16 oneDNN gets these 3D convs wrong (see bf16_conv3d_unsafe); when only the temporal
        # stride is the problem (SlowFast's laterals) the frames each output reads are gathered and a conv with
        # stride == kernel (correct in bf16) runs on them, otherwise the conv runs in fp32
        unsafe = len(self.kernel_size) == 3 and bf16_conv3d_unsafe(self.kernel_size, self.stride)
        self.gather_frames_in_bf16 = unsafe and not bf16_conv3d_unsafe(self.kernel_size[1:], self.stride[1:])
        self.fp32_in_bf16 = unsafe and not self.gather_frames_in_bf16
        self._packed: tuple[tuple, torch.Tensor] | None = None  # ((input shape, weight version), oneDNN's layout)

    @property
    def unary_op(self) -> str:
        """The post-op name ``_convolution_pointwise`` takes for this conv: 'relu' or 'none'."""
        return "relu" if self.relu else "none"

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight reordered once into the blocked layout oneDNN picks for ``x``'s shape (fp32 / bf16 2D/3D convs).

        Passing the plain weight makes oneDNN reorder it on every call, which costs a third of the time of a 1x1x1
        fp32 conv on a batch-1 clip (packing made the bf16 seed SlowFast about a tenth faster on an AMX CPU). The packed
        copy is kept for the last input shape seen and redone when that or the weight changes (``load_state_dict``
        writes into the weight in place, which bumps its version). 1D convs get the plain weight.
        """
        reorder = {5: torch._C._nn.mkldnn_reorder_conv3d_weight, 4: torch._C._nn.mkldnn_reorder_conv2d_weight}
        if x.dtype not in (torch.float32, torch.bfloat16) or self.weight.dtype != x.dtype or x.dim() not in reorder:
            return self.weight
        key = (tuple(x.shape), weight_version(self.weight))
        packed = self._packed  # read once: another thread may replace it meanwhile
        if packed is None or packed[0] != key:
            weight = self.weight.detach().contiguous().to_mkldnn()
            # torch's stub omits the input_size argument ATen's mkldnn_reorder_conv*d_weight takes
            packed = self._packed = (
                key,
                reorder[x.dim()](
                    weight,
                    self.padding,
                    self.stride,
                    self.dilation,
                    self.groups,  # type: ignore[call-arg]
                    list(key[0]),
                ),
            )
        return packed[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_packed"] = None  # opaque oneDNN tensors neither pickle nor deep-copy; rebuilt on the next call
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, *S] in the weight's dtype -> [N, C_out, *S'] in x's memory format."""
        if self.fp32_in_bf16 and x.dtype == torch.bfloat16:
            return self._forward_fp32(x).to(torch.bfloat16)
        if self.gather_frames_in_bf16 and x.dtype == torch.bfloat16:
            return self._forward_gathered(x)
        weight = self.packed_weight(x)
        if weight is self.weight and not self.relu:  # not packed (1D convs, other dtypes): the plain entry point
            return torch.mkldnn_convolution(x, weight, self.bias, self.padding, self.stride, self.dilation, self.groups)
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, self.bias, self.padding, self.stride, self.dilation, self.groups, self.unary_op, [], ""
        )

    def _forward_gathered(self, x: torch.Tensor) -> torch.Tensor:
        """The conv on the frames it reads, gathered into [N, C, T' * kt, H, W], with temporal stride kt, padding 0.

        Only the ``kt`` of every ``stride_t`` frames that an output frame reads are copied (5 of 8 for SlowFast's
        laterals), in x's dtype and layout; frames that fall in the temporal padding are zeros.
        """
        (kernel_t, *_), (stride_t, *_), (pad_t, *_) = self.kernel_size, self.stride, self.padding
        batch, channels, frames, height, width = x.shape
        frames_out = (frames + 2 * pad_t - kernel_t) // stride_t + 1
        gathered = torch.empty(
            (batch, channels, frames_out * kernel_t, height, width),
            dtype=x.dtype,
            device=x.device,
            memory_format=torch.channels_last_3d,
        )
        for k in range(kernel_t):
            start = k - pad_t  # input frame of output frame 0 at tap k; output t reads start + t * stride_t
            first, last = frames_inside(start, stride_t, frames_out, frames)
            taps = gathered[:, :, k::kernel_t]  # [N, C, T', H, W]: tap k of every output frame
            taps[:, :, :first].zero_()
            taps[:, :, last:].zero_()
            if last > first:
                taps[:, :, first:last].copy_(
                    x[:, :, start + first * stride_t : start + (last - 1) * stride_t + 1 : stride_t]
                )
        stride, padding = [kernel_t, *self.stride[1:]], [0, *self.padding[1:]]
        return torch.ops.mkldnn._convolution_pointwise(
            gathered, self.weight, self.bias, padding, stride, self.dilation, self.groups, self.unary_op, [], ""
        )

    def _forward_fp32(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        weight, bias = self.weight.float(), self.bias.float()
        out = torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation, self.groups)
        return out.relu_() if self.relu else out

    def add_relu(self, x: torch.Tensor, other: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``relu(conv(x) + other)``: :meth:`add` with the ReLU."""
        return self.add(x, other, relu=True, inplace=inplace)

    def add(self, x: torch.Tensor, other: torch.Tensor, relu: bool = False, inplace: bool = False) -> torch.Tensor:
        """``conv(x) + other`` (then ReLU if ``relu``) in one oneDNN kernel (binary-add and ReLU post-ops).

        With ``inplace`` the result is written into ``other``'s memory and ``other`` is returned: for a large output
        that skips allocating fresh memory, whose first touch (page faults) cost as much as the conv itself for a
        62 MB FPN-50 activation at 800x1216. Otherwise ``other`` is not changed.
        """
        if self.relu:
            raise ValueError("add() needs a conv without a fused ReLU of its own (the ReLU would come before the add)")
        if self.fp32_in_bf16 and x.dtype == torch.bfloat16:
            out = self._forward_fp32(x) + other.float()
            return (out.relu_() if relu else out).to(torch.bfloat16)
        if self.gather_frames_in_bf16 and x.dtype == torch.bfloat16:
            out = self._forward_gathered(x) + other
            return out.relu_() if relu else out
        unary = "relu" if relu else None  # the binary variants take no unary op as None, not "none"
        # the in-place variant writes into its first argument, ``other``; the other one takes ``x`` first
        operator = torch.ops.mkldnn._convolution_pointwise_ if inplace else torch.ops.mkldnn._convolution_pointwise
        first, second = (other, x) if inplace else (x, other)
        conv_args = (self.packed_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups)
        return operator.binary(first, second, *conv_args, "add", 1.0, unary, [], "")

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
            f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, relu={self.relu}"
        )


def weight_version(weight: torch.Tensor) -> tuple[int, int, torch.dtype]:
    """What changes when a weight does: its version counter (in-place writes, e.g. ``load_state_dict``), its storage
    (a new tensor assigned) and its dtype; the key of every cache derived from a weight."""
    return weight._version, weight.data_ptr(), weight.dtype


def frames_inside(start: int, step: int, count: int, frames: int) -> tuple[int, int]:
    """The range [first, last) of i in [0, count) for which frame ``start + i * step`` lies inside [0, frames)."""
    first = max(0, (-start + step - 1) // step)
    last = max(first, min(count, (frames - 1 - start) // step + 1))
    return first, last
