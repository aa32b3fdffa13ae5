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
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from lateral.errors import InputError, LateralError
from lateral.inference.folding import fold_batchnorm
from lateral.inference.onednn import OneDnnConv
from lateral.inference.openvino_backend import OpenVinoBackend
from lateral.inference.stem import use_folded_stems
from lateral.inference.temporal_winograd import use_temporal_winograd_convs
from lateral.inference.winograd import use_winograd_convs
from lateral.inference.workarounds import apply_training_workarounds
from lateral.inference.wrapper import InferenceModule, refuse_training
from lateral.models.fpn import FeaturePyramid
from lateral.models.layers import ConvModule
from lateral.models.resnet3d import BasicBlock3d, Bottleneck3d

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


class PrecisionError(LateralError, ValueError):
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
        raise InputError(f"on_unsupported must be one of {ON_UNSUPPORTED}, got {on_unsupported!r}")
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


@functools.cache
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


# ----------------------------------------------------------------------------------------------- fused oneDNN blocks


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

    def __init__(
        self, body: list[tuple[str, nn.Module]], last_name: str, last: nn.Module, downsample: nn.Module | None
    ):
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

    def __init__(self, pyramid: FeaturePyramid):
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
            assert lateral_conv is not None  # fuse_feature_pyramids fuses only pyramids whose laterals are OneDnnConvs
            upsampled = F.interpolate(top_down, size=inputs[i].shape[-2:], mode="nearest")
            top_down = lateral_conv.add(
                inputs[i], upsampled.contiguous(memory_format=torch.channels_last), inplace=True
            )
            outputs.insert(0, self.layer_blocks[i](top_down))
        if self.extra_blocks is not None:
            outputs.extend(self.extra_blocks(outputs, inputs))
        return outputs


def fuse_feature_pyramids(model: nn.Module) -> int:
    """Replace, in place, every FeaturePyramid whose laterals are plain 1x1 oneDNN convs by a FusedFeaturePyramid."""
    fused = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is not FeaturePyramid:
                continue
            laterals = [_only_conv(block) for block in child.inner_blocks]
            if all(
                c is not None and not c.relu and list(c.kernel_size) == [1, 1] and list(c.stride) == [1, 1]
                for c in laterals
            ):
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

    def convertible(conv: nn.Module) -> TypeGuard[nn.Conv1d | nn.Conv2d | nn.Conv3d]:
        return isinstance(conv, _CONV_TYPES) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)

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


# -------------------------------------------------------------------------------------- preparing the copy


def _conv_memory_format(module: nn.Module) -> torch.memory_format:
    """channels_last_3d if the module has 3D convs, channels_last if it has 2D ones, else contiguous."""
    convs = [m for m in module.modules() if isinstance(m, _CONV_TYPES)]
    if any(isinstance(m, nn.Conv3d) for m in convs):
        return torch.channels_last_3d
    if any(isinstance(m, nn.Conv2d) for m in convs):
        return torch.channels_last
    return torch.contiguous_format


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
        use_onednn_convs(module)
        fuse_residual_blocks(module)
        fuse_feature_pyramids(module)
        # bf16 would lose too much in the tile transforms; LATERAL_WINOGRAD=0 keeps every conv direct
        if dtype == torch.float32 and os.environ.get("LATERAL_WINOGRAD", "1") != "0":
            use_winograd_convs(module)
            use_temporal_winograd_convs(module)
        raw_input_ok = use_folded_stems(module, dtype)
    elif dtype == torch.bfloat16:
        # plain convs run in bf16 here (compiled, or no direct oneDNN calls), so they need the workarounds of bf16
        # training; OneDnnConv above handles the wrong bf16 convs itself and the stems better
        apply_training_workarounds(module, amp=dtype)
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
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    is_recognizer = isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(
        getattr(model, "cls_head", None), nn.Module
    )
    if backend == "openvino":
        if compile:
            raise InputError("compile=True is for the torch backend; OpenVINO compiles the model itself")
        if not is_recognizer or _model_device(model).type != "cpu":
            raise InputError("backend='openvino' runs a recognizer (backbone + cls_head) on the CPU")
    precision = resolve_precision(precision, _model_device(model), on_unsupported)
    dtype = PRECISIONS[precision]
    opt = copy.deepcopy(model).eval()
    for param in opt.parameters():
        param.requires_grad_(False)
    fold_batchnorm(opt)
    if backend == "openvino":
        backbone = opt.get_submodule("backbone")
        runner = OpenVinoBackend(backbone, precision, threads=torch.get_num_threads())
        opt.backbone = InferenceModule(backbone, runner=runner)  # fp32 in and out; OpenVINO picks bf16 inside
    elif is_recognizer:
        opt.backbone = _prepare(opt.get_submodule("backbone"), dtype, compile)
    if not is_recognizer:
        opt = _prepare(opt, dtype, compile)
    for module in opt.modules():
        if not isinstance(module, InferenceModule):  # which refuses training itself
            # an instance attribute, so copies and pickles keep it: train() on the copy or on any part of it (a
            # head with dropout) is refused before a flag changes
            module.train = functools.partial(refuse_training, module)  # type: ignore[method-assign]  # on purpose, see above
    return opt
