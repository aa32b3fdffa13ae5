"""The inference copy of a model: BatchNorm folded into the convs, channels-last, optional bf16 and torch.compile.

``optimize(model)`` never touches ``model``: it deep-copies it, switches the copy to eval mode, folds every
BatchNorm that directly follows a conv into that conv's weight and bias, stores the conv weights channels-last
(``channels_last_3d`` for 3D models, ``channels_last`` for 2D ones) and wraps the part that does the heavy work
(the backbone of a recognizer, or a bare backbone) in an :class:`InferenceModule`. That wrapper converts the input to
the inference layout and precision, runs without autograd, and hands float32 back, so the copy is called exactly
like the original: ``opt(x)`` with ``x [N, C, T, H, W]`` float32 returns float32 logits, and a recognizer keeps
``opt.predict(clips)`` for multi-view input.

Why each step: oneDNN's convolutions are several times faster channels-last (a 1x1x1 conv3d reaches ~6x the
throughput of the default layout on AVX-512), folding removes one full pass over every activation per conv, and
bf16 halves memory traffic and doubles the FMA rate on CPUs with native bf16 (AVX-512 BF16, AMX). A recognizer's
classifier stays float32: it is tiny, and the pooled features it sees are where bf16 rounding would show most.
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lateral.models.layers import bf16_conv3d_unsafe, check_float_input

__all__ = [
    "PRECISIONS",
    "FusedResidualBlock",
    "InferenceModule",
    "OneDnnConv",
    "PrecisionError",
    "bf16_supported",
    "compile_available",
    "fold_batchnorm",
    "optimize",
    "resolve_precision",
]

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
BACKENDS = ("torch", "openvino")
ON_UNSUPPORTED = ("warn", "error", "fp32")
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class PrecisionError(ValueError):
    """A precision that is unknown, or that the device cannot run natively when the caller asked to be told."""


# ---------------------------------------------------------------------------------------------- precision checks


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` runs bf16 convolutions natively (fast), not through a slow emulation.

    On CPU that means oneDNN found AVX-512 BF16, AMX or AVX2-VNNI-2; without them PyTorch still computes bf16
    convolutions correctly, but through reference kernels that are hundreds of times slower than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device | str = "cpu", on_unsupported: str = "warn") -> str:
    """Check ``precision`` against the device and return the precision to run.

    Args:
        precision: 'fp32' or 'bf16'.
        device: where the model runs.
        on_unsupported: what to do when the device lacks native bf16: 'warn' (run bf16 anyway, correct but slow,
            with a warning), 'error' (raise :class:`PrecisionError`) or 'fp32' (fall back to fp32 with a warning).

    Returns:
        'fp32' or 'bf16'.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if on_unsupported not in ON_UNSUPPORTED:
        raise ValueError(f"on_unsupported must be one of {ON_UNSUPPORTED}, got {on_unsupported!r}")
    if precision == "fp32" or bf16_supported(device):
        return precision
    device = torch.device(device)
    what = (
        f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 (AVX-512 BF16 or AMX)"
        if device.type == "cpu"
        else f"device {device} does not support bf16"
    )
    if on_unsupported == "error":
        raise PrecisionError(
            f"precision='bf16' requested but {what}; bf16 convolutions would run hundreds of times slower than "
            "fp32. Use precision 'fp32', or ask for a fallback (--fallback-fp32 on the command line, "
            "on_unsupported='fp32' in Python)."
        )
    if on_unsupported == "fp32":
        warnings.warn(f"{what}: falling back to fp32 as asked", stacklevel=3)
        return "fp32"
    warnings.warn(f"{what}: running bf16 anyway (correct, but far slower than fp32)", stacklevel=3)
    return precision


@functools.lru_cache(maxsize=None)
def compile_available() -> tuple[bool, str]:
    """Whether torch.compile's default (inductor) backend can build a kernel here, and if not, why.

    Compiles and runs a two-op function once per process; inductor needs a working C++ compiler on CPU.
    """
    try:
        import torch._dynamo

        def probe(x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x) * 2 + 1

        compiled = torch.compile(probe, fullgraph=True)
        ok = torch.equal(compiled(torch.arange(8.0) - 4), probe(torch.arange(8.0) - 4))
        torch._dynamo.reset()
        return (True, "") if ok else (False, "torch.compile gave a wrong result on a probe")
    except Exception as err:  # any backend failure means "cannot compile here"
        return False, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


# -------------------------------------------------------------------------------------------- BatchNorm folding


def _is_foldable_norm(module: nn.Module) -> bool:
    """BatchNorm with running statistics (nn.BatchNorm*d, SyncBatchNorm, torchvision's FrozenBatchNorm2d)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats and module.running_var is not None
    return type(module).__name__ == "FrozenBatchNorm2d" and hasattr(module, "running_var")


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``bn(conv(x)) == conv'(x)``.

    w' = w * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta, computed in float64 so the
    folded float32 weights are the correctly rounded values.
    """
    weight = conv.weight
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma * torch.rsqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    weight.copy_((weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype))
    new_bias = ((bias - mean) * scale + beta).to(weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def _sibling_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv, norm) attribute pairs of ``module`` whose forward applies the norm directly to the conv's output.

    Only classes whose forward is known are listed: a conv and a norm that merely share a parent may be used in
    any order, so guessing from names would silently change results.
    """
    from lateral.models.layers import ConvModule

    if isinstance(module, ConvModule):
        return [("conv", "bn")]
    cls = type(module)
    if cls.__module__ == "torchvision.models.resnet" and cls.__name__ in ("BasicBlock", "Bottleneck", "ResNet"):
        return [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
    if cls.__module__ == "lateral.models.resnet" and cls.__name__ == "ResNetTrunk":  # FPN bottom-up stem
        return [("conv1", "bn1")]
    return []


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every BatchNorm of ``model`` that directly follows a conv; ``model`` must be in eval mode.

    Recognised patterns: mmcv-style ``ConvModule`` (``conv`` then ``bn``; the ``bn`` slot becomes None),
    torchvision ResNet blocks and the FPN trunk stem (``convK`` then ``bnK``) and consecutive ``conv, bn`` children of an
    ``nn.Sequential`` (the norm becomes ``nn.Identity``). Other norms are left as they are.

    Returns:
        The number of norms folded.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (folding uses the running statistics)")
    from lateral.models.layers import ConvModule

    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in _sibling_pairs(module):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, _CONV_TYPES) and bn is not None and _is_foldable_norm(bn):
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, None if isinstance(module, ConvModule) else nn.Identity())
                folded += 1
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, conv), (bn_name, bn) in zip(children, children[1:]):
                if isinstance(conv, _CONV_TYPES) and _is_foldable_norm(bn):
                    fold_conv_bn(conv, bn)
                    setattr(module, bn_name, nn.Identity())
                    folded += 1
    return folded


# ------------------------------------------------------------------------------------------- oneDNN convs


class OneDnnConv(nn.Module):
    """A folded conv that always runs oneDNN, with an optional fused ReLU (a oneDNN post-op).

    ATen picks its own convolution kernel per call, and for batch-1 video it often picks ``slow_conv3d`` (im2col and
    an fp32 GEMM, several times slower than oneDNN on these shapes; see the module docstring). This module keeps the
    conv's ``weight`` and ``bias`` (same state-dict names) and calls oneDNN directly.

    Args:
        conv: the ``nn.Conv1d/2d/3d`` to run (zero padding given as ints).
        relu: apply ReLU to the output inside the same kernel.
    """

    def __init__(self, conv: nn.Module, relu: bool = False):
        super().__init__()
        self.weight = conv.weight
        if conv.bias is None:
            self.bias = nn.Parameter(conv.weight.new_zeros(conv.out_channels), requires_grad=False)
        else:
            self.bias = conv.bias
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = relu
        # bf16 oneDNN gets these 3D convs wrong (see lateral.models.layers.bf16_conv3d_unsafe); when only the temporal
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
        fp32 conv on a batch-1 clip (packing made the bf16 seed SlowFast 9-15 % faster on an AMX CPU). The packed
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
            packed = self._packed = (
                key, reorder[x.dim()](weight, self.padding, self.stride, self.dilation, self.groups, list(key[0]))
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
            (batch, channels, frames_out * kernel_t, height, width), dtype=x.dtype, device=x.device,
            memory_format=torch.channels_last_3d,
        )
        for k in range(kernel_t):
            start = k - pad_t  # input frame of output frame 0 at tap k; output t reads start + t * stride_t
            first, last = frames_inside(start, stride_t, frames_out, frames)
            taps = gathered[:, :, k::kernel_t]  # [N, C, T', H, W]: tap k of every output frame
            taps[:, :, :first].zero_()
            taps[:, :, last:].zero_()
            if last > first:
                taps[:, :, first:last].copy_(x[:, :, start + first * stride_t : start + (last - 1) * stride_t + 1 : stride_t])
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
        if inplace:
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                other, x, self.packed_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups,
                "add", 1.0, unary, [], "",
            )
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, self.packed_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", 1.0, unary, [], "",
        )

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


class FusedResidualBlock(nn.Module):
    """A residual block whose last conv adds the shortcut and applies the block's ReLU in the same oneDNN kernel.

    Saves two full passes over the block's output (the add and the ReLU) per block. The block's children keep their
    names (``conv1``, ``conv2``, ``conv3``, ``downsample``), so the state dict is the block's own.

    Args:
        body: (name, module) of the convs before the last one, in order, each already ending in its ReLU.
        last_name: name of the last conv: a :class:`OneDnnConv`, or a ``ConvModule`` holding one as ``.conv``.
        last: that module.
        downsample: the shortcut projection, or None for the identity.
    """

    def __init__(self, body: list[tuple[str, nn.Module]], last_name: str, last: nn.Module,
                 downsample: nn.Module | None):
        super().__init__()
        for name, module in body:
            self.add_module(name, module)
        self.add_module(last_name, last)
        self.downsample = downsample
        self._body_names = [name for name, _ in body]
        self._last_name = last_name
        # whether the block's input is used by nothing after the block (set by fuse_residual_blocks), so that an
        # identity shortcut may be overwritten with the block's output
        self.private_input = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, *S] -> relu(body(x) + shortcut(x)): [N, C_out, *S']."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = x
        for name in self._body_names:
            out = getattr(self, name)(out)
        last = getattr(self, self._last_name)
        last_conv: OneDnnConv = last.conv if hasattr(last, "conv") else last
        # a projected shortcut is a fresh tensor of the block's own: write the output into it
        fresh = shortcut is not x and not shortcut._is_view()
        layout = torch.channels_last_3d if shortcut.dim() == 5 else torch.channels_last
        inplace = (fresh or self.private_input) and shortcut.is_contiguous(memory_format=layout)
        return last_conv.add_relu(out, shortcut, inplace=inplace)


def _fused_block(block: nn.Module) -> FusedResidualBlock | None:
    """The fused form of a BN-folded, oneDNN-converted residual block, or None if it does not qualify.

    Handles lateral's ``BasicBlock3d`` / ``Bottleneck3d`` (ConvModules; earlier ReLUs already fused) and torchvision's
    ``BasicBlock`` / ``Bottleneck`` (plain convs, folded BNs left as Identity, one shared ReLU, which is fused into
    every conv here).
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from lateral.models.layers import ConvModule
    from lateral.models.resnet3d import BasicBlock3d, Bottleneck3d

    if type(getattr(block, "relu", None)) is not nn.ReLU:
        return None
    if isinstance(block, (BasicBlock3d, Bottleneck3d)):
        names = ["conv1", "conv2", "conv3"] if isinstance(block, Bottleneck3d) else ["conv1", "conv2"]
        convs = [getattr(block, n) for n in names]
        if getattr(block, "with_cp", False) or not all(isinstance(c, ConvModule) and c.bn is None for c in convs):
            return None
        if not all(isinstance(c.conv, OneDnnConv) for c in convs) or convs[-1].activate is not None:
            return None
        if not all(c.conv.relu and c.activate is None for c in convs[:-1]):
            return None
        return FusedResidualBlock(list(zip(names[:-1], convs[:-1])), names[-1], convs[-1], block.downsample)
    if isinstance(block, (BasicBlock, Bottleneck)):
        names = ["conv1", "conv2", "conv3"] if isinstance(block, Bottleneck) else ["conv1", "conv2"]
        convs = [getattr(block, n) for n in names]
        norms = [getattr(block, n.replace("conv", "bn")) for n in names]
        if not all(isinstance(c, OneDnnConv) and not c.relu for c in convs):
            return None
        if not all(isinstance(n, nn.Identity) for n in norms):  # BN not folded (e.g. GroupNorm): keep the block
            return None
        for conv in convs[:-1]:
            conv.relu = True
        return FusedResidualBlock(list(zip(names[:-1], convs[:-1])), names[-1], convs[-1], block.downsample)
    return None


def fuse_residual_blocks(model: nn.Module) -> int:
    """Replace, in place, every qualifying residual block by a :class:`FusedResidualBlock`; return how many."""
    fused = 0
    for module in list(model.modules()):
        for index, (name, child) in enumerate(list(module.named_children())):
            replacement = _fused_block(child)
            if replacement is not None:
                # inside an nn.Sequential, a later block's input is the previous block's output and nothing else's
                replacement.private_input = isinstance(module, nn.Sequential) and index > 0
                setattr(module, name, replacement)
                fused += 1
    return fused


def _only_conv(block: nn.Module) -> OneDnnConv | None:
    """The OneDnnConv of a block that is just that conv (an ``nn.Sequential`` of it and folded-norm Identities)."""
    if isinstance(block, OneDnnConv):
        return block
    if not isinstance(block, nn.Sequential) or not isinstance(block[0], OneDnnConv):
        return None
    return block[0] if all(isinstance(m, nn.Identity) for m in list(block)[1:]) else None


class FusedFeaturePyramid(nn.Module):
    """An FPN top-down pathway whose 1x1 laterals add the upsampled coarser map inside the conv kernel.

    ``lateral(C_i) + upsample(top_down)`` becomes one oneDNN conv with a binary-add post-op that writes into the
    upsampled map's (fresh) memory: no separate add pass and no new full-size allocation per level. Holds the
    pyramid's own ``inner_blocks``, ``layer_blocks`` and ``extra_blocks``, so the state dict is unchanged.
    """

    def __init__(self, pyramid: nn.Module):
        super().__init__()
        self.inner_blocks = pyramid.inner_blocks
        self.layer_blocks = pyramid.layer_blocks
        self.extra_blocks = pyramid.extra_blocks

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """inputs: [N, C_i, H_i, W_i], finest first -> levels [N, out_channels, H_i, W_i] (+ extra levels)."""
        top_down = self.inner_blocks[-1](inputs[-1])
        top = self.layer_blocks[-1](top_down) if len(self.layer_blocks) == len(inputs) else top_down
        outputs = [top]
        for i in range(len(inputs) - 2, -1, -1):
            lateral_conv = _only_conv(self.inner_blocks[i])
            upsampled = F.interpolate(top_down, size=inputs[i].shape[-2:], mode="nearest")
            top_down = lateral_conv.add(inputs[i], upsampled.contiguous(memory_format=torch.channels_last), inplace=True)
            outputs.insert(0, self.layer_blocks[i](top_down))
        if self.extra_blocks is not None:
            outputs.extend(self.extra_blocks(outputs, inputs))
        return outputs


def fuse_feature_pyramids(model: nn.Module) -> int:
    """Replace, in place, every FeaturePyramid whose laterals are plain 1x1 oneDNN convs by a FusedFeaturePyramid."""
    from lateral.models.fpn import FeaturePyramid

    fused = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is not FeaturePyramid:
                continue
            laterals = [_only_conv(block) for block in child.inner_blocks]
            if all(c is not None and not c.relu and list(c.kernel_size) == [1, 1] and list(c.stride) == [1, 1]
                   for c in laterals):
                setattr(module, name, FusedFeaturePyramid(child))
                fused += 1
    return fused


def onednn_convs_available(dtype: torch.dtype, device: torch.device) -> bool:
    """oneDNN convolutions run here in ``dtype``: CPU with mkldnn, and bf16 only with native support."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and bf16_supported("cpu"))


def use_onednn_convs(model: nn.Module) -> int:
    """Replace, in place, every zero-padded conv of ``model`` by a :class:`OneDnnConv`.

    A ``ConvModule`` whose norm is gone (folded) and whose activation is a ReLU gets the ReLU fused into its conv.

    Returns:
        The number of convs replaced.
    """
    from lateral.models.layers import ConvModule

    def convertible(conv: nn.Module) -> bool:
        return (
            isinstance(conv, _CONV_TYPES)
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
        )

    replaced = 0
    for module in list(model.modules()):
        if isinstance(module, ConvModule) and module.bn is None and convertible(module.conv):
            fuse_relu = type(module.activate) is nn.ReLU
            module.conv = OneDnnConv(module.conv, relu=fuse_relu)
            if fuse_relu:
                module.activate = None
            replaced += 1
            continue
        if isinstance(module, (ConvModule, OneDnnConv)):
            continue
        for name, child in list(module.named_children()):
            if convertible(child) and not isinstance(module, ConvModule):
                setattr(module, name, OneDnnConv(child))
                replaced += 1
    return replaced


# ---------------------------------------------------------------------------------------------- the wrapper


def _conv_memory_format(module: nn.Module) -> torch.memory_format:
    """channels_last_3d if the module has 3D convs, channels_last if it has 2D ones, else contiguous."""
    convs = [m for m in module.modules() if isinstance(m, _CONV_TYPES)]
    if any(isinstance(m, nn.Conv3d) for m in convs):
        return torch.channels_last_3d
    if any(isinstance(m, nn.Conv2d) for m in convs):
        return torch.channels_last
    return torch.contiguous_format


def _input_format_ok(x: torch.Tensor, memory_format: torch.memory_format) -> bool:
    wanted_dim = {torch.channels_last_3d: 5, torch.channels_last: 4}.get(memory_format)
    return wanted_dim is None or x.dim() == wanted_dim


def _to_float32(out: Any) -> Any:
    """Cast every floating tensor in a (nested) output to float32; keeps tuples, lists and dicts."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return type(out)((key, _to_float32(value)) for key, value in out.items())
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float32(value) for value in out)
    return out


TRAINING_REFUSED = (
    "this is an inference copy (BatchNorm folded into the convs) and cannot be trained; "
    "train the original model and call lateral.optimize again"
)


def refuse_training(module: nn.Module, mode: bool = True) -> nn.Module:
    """``module.train`` of every part of an inference copy: ``train(False)`` / ``eval()`` work, ``train()`` raises
    before any flag is switched (nn.Module.train would set the module's own flag, then fail further down)."""
    if mode:
        raise RuntimeError(TRAINING_REFUSED)
    return type(module).train(module, False)


class InferenceModule(nn.Module):
    """Runs ``module`` without autograd in the inference layout and precision; returns float32.

    Args:
        module: the BatchNorm-folded module, already converted to ``dtype`` and ``memory_format``.
        dtype: float32 or bfloat16; the input is cast to it.
        memory_format: layout the input is converted to (channels_last_3d for ``[N, C, T, H, W]`` input).
        compile: run ``module`` through ``torch.compile`` (inductor, with freezing: weights become constants and
            are pre-packed for oneDNN). Kernels are built on the first call for each input shape.
        runner: what runs the module instead of PyTorch (an :class:`~lateral.inference.exporters.OpenVinoBackend`);
            ``module`` is then kept for its attributes and state dict.
        convert_input: convert the input to ``dtype`` and ``memory_format`` before ``module``; False when the module's
            first convs read any layout and cast themselves (:mod:`lateral.inference.stem`).
    """

    def __init__(
        self,
        module: nn.Module,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.contiguous_format,
        compile: bool = False,
        runner: Callable[[torch.Tensor], Any] | None = None,
        convert_input: bool = True,
    ):
        super().__init__()
        self.convert_input = convert_input
        self.module = module
        self.dtype = dtype
        self.memory_format = memory_format
        self.compiled = compile
        self.backend = "torch" if runner is None else type(runner).__name__
        if runner is None:
            runner = torch.compile(module) if compile else module
        # kept out of the submodule registry so the state dict has one copy of each weight
        object.__setattr__(self, "_runner", runner)
        super().train(False)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        # torch.save pickles with protocol 2, where a torch.memory_format does not pickle: keep its name
        state["memory_format"] = str(self.memory_format).removeprefix("torch.")
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        if isinstance(state.get("memory_format"), str):
            state["memory_format"] = getattr(torch, state["memory_format"])
        super().__setstate__(state)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # backbone attributes (out_channels, feature_info, slow_path, ...) stay reachable through the wrapper
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None:
                raise
            return getattr(inner, name)

    def train(self, mode: bool = True) -> InferenceModule:
        if mode:
            raise RuntimeError(TRAINING_REFUSED)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> Any:
        """x: [N, C, T, H, W] (or [N, C, H, W] for 2D models), any float dtype -> the module's outputs in float32."""
        if isinstance(x, torch.Tensor):
            check_float_input(x, "the inference copy")  # converting uint8 frames to float would skip normalising
        with torch.no_grad():
            if self.convert_input and _input_format_ok(x, self.memory_format):
                x = x.to(dtype=self.dtype, memory_format=self.memory_format)
            elif self.convert_input:  # a wrong rank: let the module raise its own message about the expected layout
                x = x.to(dtype=self.dtype)
            if self.compiled:
                # inductor reads ``freezing`` when it compiles, i.e. inside this call (the first one per shape);
                # torch.compile(options={"freezing": True}) does not reach that point, so the convs would stay on
                # ATen's default kernels instead of pre-packed oneDNN ones with fused neighbours
                import torch._inductor.config as inductor_config

                with inductor_config.patch(freezing=True):
                    out = self._runner(x)
            else:
                out = self._runner(x)
        return _to_float32(out)

    def extra_repr(self) -> str:
        return (
            f"dtype={self.dtype}, memory_format={self.memory_format}, compiled={self.compiled}, backend={self.backend}, "
            f"convert_input={self.convert_input}"
        )


def _prepare(module: nn.Module, dtype: torch.dtype, compile: bool) -> InferenceModule:
    """Convert a folded, eval-mode module to ``dtype`` and channels-last and wrap it."""
    memory_format = _conv_memory_format(module)
    module.to(dtype=dtype)
    for conv in module.modules():
        if isinstance(conv, nn.Conv3d) and memory_format == torch.channels_last_3d:
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(conv, nn.Conv2d) and memory_format == torch.channels_last:
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    # inductor finds and fuses plain convs itself (freezing pre-packs them), so the direct oneDNN calls are for eager
    raw_input_ok = False
    if not compile and onednn_convs_available(dtype, _model_device(module)):
        from lateral.inference.stem import use_folded_stems
        from lateral.inference.temporal_winograd import use_temporal_winograd_convs
        from lateral.inference.winograd import use_winograd_convs

        use_onednn_convs(module)
        fuse_residual_blocks(module)
        fuse_feature_pyramids(module)
        # bf16 would lose too much in the tile transforms; LATERAL_WINOGRAD=0 keeps every conv direct
        if dtype == torch.float32 and os.environ.get("LATERAL_WINOGRAD", "1") != "0":
            use_winograd_convs(module)
            use_temporal_winograd_convs(module)
        raw_input_ok = use_folded_stems(module, dtype)
    return InferenceModule(
        module, dtype=dtype, memory_format=memory_format, compile=compile, convert_input=not raw_input_ok
    )


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def optimize(
    model: nn.Module,
    precision: str = "fp32",
    compile: bool = False,
    *,
    on_unsupported: str = "warn",
    backend: str = "torch",
) -> nn.Module:
    """Return an inference-optimised copy of a recognizer or backbone; ``model`` itself is not modified.

    The copy is in eval mode, has every BatchNorm that follows a conv folded into it, keeps conv weights
    channels-last and runs its backbone in ``precision``. It is called like the original: for a recognizer,
    ``opt(x)`` with ``x [N, C, T, H, W]`` float32 returns float32 logits ``[N, num_classes]`` and
    ``opt.predict(clips)`` still averages views; a bare backbone returns its features in float32.

    Args:
        model: a ``Recognizer3D`` (anything with ``backbone`` and ``cls_head``) or a backbone (e.g. ``ResNetFPN``).
        precision: 'fp32' or 'bf16' (weights and activations of the backbone in bfloat16, fp32 accumulation in
            oneDNN; the classifier stays fp32).
        compile: also run the backbone through ``torch.compile`` with inductor freezing. The first call per
            input shape compiles (tens of seconds to minutes for an R50).
        on_unsupported: when bf16 is asked for on a device without native bf16: 'warn' (run bf16 anyway),
            'error' (raise :class:`PrecisionError`) or 'fp32' (fall back to fp32).
        backend: 'torch' (PyTorch runs the copy) or 'openvino' (a recognizer's backbone is converted with
            OpenVINO in memory, once per input shape, with PyTorch's thread count; the head stays in PyTorch;
            needs ``pip install 'lateral-vision[openvino]'``). Which is faster depends on the CPU: measure with
            ``lateral bench CONFIG --openvino``.

    Returns:
        The inference copy (an ``nn.Module``; parameters do not require grad, ``train()`` raises).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize expects an nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    is_recognizer = isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(
        getattr(model, "cls_head", None), nn.Module
    )
    if backend == "openvino":
        if compile:
            raise ValueError("compile=True is for the torch backend; OpenVINO compiles the model itself")
        if not is_recognizer or _model_device(model).type != "cpu":
            raise ValueError("backend='openvino' runs a recognizer (backbone + cls_head) on the CPU")
    precision = resolve_precision(precision, _model_device(model), on_unsupported)
    dtype = PRECISIONS[precision]
    opt = copy.deepcopy(model).eval()
    for param in opt.parameters():
        param.requires_grad_(False)
    fold_batchnorm(opt)
    if backend == "openvino":
        from lateral.inference.exporters import OpenVinoBackend

        runner = OpenVinoBackend(opt.backbone, precision, threads=torch.get_num_threads())
        opt.backbone = InferenceModule(opt.backbone, runner=runner)  # fp32 in and out; OpenVINO picks bf16 inside
    elif is_recognizer:
        opt.backbone = _prepare(opt.backbone, dtype, compile)
    if not is_recognizer:
        opt = _prepare(opt, dtype, compile)
    for module in opt.modules():
        if not isinstance(module, InferenceModule):  # which refuses training itself
            # an instance attribute, so copies and pickles keep it: train() on the copy or on any part of it (a
            # head with dropout) is refused before a flag changes
            module.train = functools.partial(refuse_training, module)
    return opt
