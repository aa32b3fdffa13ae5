"""Conv + norm + activation unit with mmcv's ``ConvModule`` state-dict names (``conv``, ``bn``).

mmaction2 describes layers with ``conv_cfg`` / ``norm_cfg`` / ``act_cfg`` dicts. They are read here, once, into
plain ``nn.Conv3d`` / ``nn.BatchNorm3d`` / ``nn.ReLU`` objects so the rest of the model code stays ordinary PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from lateral.config import ConfigError, suggest
from lateral.errors import InputError

__all__ = [
    "check_input_layout",
    "ConvModule",
    "make_norm",
    "make_activation",
    "check_conv_cfg",
]


def check_input_layout(x: torch.Tensor, in_channels: int, where: str, video: bool, min_frames: int = 1) -> None:
    """Raise a ValueError that names the expected layout if ``x`` is not a clip batch ``[N, C, T, H, W]``
    (``video``) or an image batch ``[N, C, H, W]`` with ``in_channels`` channels (and, for clips, ``min_frames``)."""
    layout, kind, dims = ("[N, C, T, H, W]", "tensor", 5) if video else ("[N, C, H, W]", "image batch", 4)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: expected a tensor {layout}, got {type(x).__name__}")
    shape = [int(d) for d in x.shape]  # plain ints also while tracing, where sizes are tensors
    if x.dim() != dims:
        hint = ""
        if video and x.dim() == 6:
            hint = " (for multi-view input [N, V, C, T, H, W] use model.predict)"
        elif not video and x.dim() == 5:
            hint = " (a 2D backbone takes images, not clips [N, C, T, H, W])"
        raise InputError(f"{where}: expected a {dims}-D {kind} {layout}, got shape {shape}{hint}")
    if x.shape[1] != in_channels:
        channels_last = "frames [N, T, H, W, C]" if video else "images [N, H, W, C]"
        raise InputError(
            f"{where}: expected {in_channels} channels in dim 1 of {layout}, got shape {shape}"
            f" ({channels_last} must be permuted to {layout} first)"
        )
    if video and x.shape[2] < min_frames:
        raise InputError(f"{where}: needs at least {min_frames} frames (dim 2), got shape {shape}")
    if 0 in shape:
        raise InputError(f"{where}: got an empty {kind} of shape {shape}; every dimension of {layout} must be >= 1")
    check_float_input(x, where)


def check_float_input(x: torch.Tensor, where: str) -> None:
    """Raise a ValueError for integer pixels: raw frames (uint8) must be normalised to float before a model."""
    if not x.is_floating_point():
        raise InputError(
            f"{where}: expected float input, got {x.dtype}; raw frames must be normalised first "
            "((x.float() - mean) / std, as lateral.engine.evaluate.prepare_inputs does with the "
            "model's data_preprocessor)"
        )


_NORM_TYPES = {"BN3d", "BN", "SyncBN", "BN2d"}
_ACT_TYPES = {"ReLU", "LeakyReLU", "GELU", "SiLU", "Swish", "Sigmoid", "Tanh", "ReLU6", "HSwish", "ELU"}


def check_conv_cfg(conv_cfg: dict | None) -> None:
    """Only 3D convolutions are built here; say so if a config asks for something else."""
    if conv_cfg is None:
        return
    conv_type = conv_cfg.get("type", "Conv3d")
    if conv_type not in ("Conv3d", "Conv"):
        raise ConfigError(f"conv_cfg type '{conv_type}' is not supported; use dict(type='Conv3d')")
    extra = set(conv_cfg) - {"type"}
    if extra:
        raise ConfigError(f"conv_cfg accepts only 'type', got extra keys {sorted(extra)}")


def make_norm(norm_cfg: dict, num_features: int) -> _BatchNorm:
    """Build the norm layer described by an mmcv ``norm_cfg`` such as ``dict(type='BN3d', requires_grad=True)``.

    ``SyncBN`` becomes ``nn.SyncBatchNorm``; its state-dict names are those of ``BatchNorm3d``.
    """
    cfg = dict(norm_cfg)
    norm_type = cfg.pop("type", "BN3d")
    if norm_type not in _NORM_TYPES:
        raise ConfigError(f"norm_cfg type '{norm_type}' is not supported.{suggest(norm_type, _NORM_TYPES)}")
    requires_grad = cfg.pop("requires_grad", True)
    eps = cfg.pop("eps", 1e-5)
    momentum = cfg.pop("momentum", 0.1)
    if cfg:
        raise ConfigError(f"norm_cfg: unknown keys {sorted(cfg)}; accepted: type, requires_grad, eps, momentum")
    norm: _BatchNorm
    if norm_type == "SyncBN":
        norm = nn.SyncBatchNorm(num_features, eps=eps, momentum=momentum)
    else:
        norm = nn.BatchNorm3d(num_features, eps=eps, momentum=momentum)
    for param in norm.parameters():
        param.requires_grad = requires_grad
    return norm


def make_activation(act_cfg: dict) -> nn.Module:
    """Build the activation described by an mmcv ``act_cfg`` such as ``dict(type='ReLU', inplace=True)``."""
    cfg = dict(act_cfg)
    act_type = cfg.pop("type", "ReLU")
    if act_type not in _ACT_TYPES:
        raise ConfigError(f"act_cfg type '{act_type}' is not supported.{suggest(act_type, _ACT_TYPES)}")
    inplace = cfg.pop("inplace", True)
    if act_type == "ReLU":
        act: nn.Module = nn.ReLU(inplace=inplace)
    elif act_type == "ReLU6":
        act = nn.ReLU6(inplace=inplace)
    elif act_type == "LeakyReLU":
        act = nn.LeakyReLU(negative_slope=cfg.pop("negative_slope", 0.01), inplace=inplace)
    elif act_type == "ELU":
        act = nn.ELU(alpha=cfg.pop("alpha", 1.0), inplace=inplace)
    elif act_type == "GELU":
        act = nn.GELU(approximate=cfg.pop("approximate", "none"))
    elif act_type in ("SiLU", "Swish"):
        act = nn.SiLU(inplace=inplace)
    elif act_type == "HSwish":
        act = nn.Hardswish(inplace=inplace)
    elif act_type == "Tanh":
        act = nn.Tanh()
    else:
        act = nn.Sigmoid()
    if cfg:
        raise ConfigError(f"act_cfg for {act_type}: unknown keys {sorted(cfg)}")
    return act


class ConvModule(nn.Module):
    """``Conv3d`` followed by an optional norm and an optional activation.

    Submodule names (``conv``, ``bn``, ``activate``) equal mmcv's so mmaction2 checkpoints load unchanged.
    """

    # conv is declared as any module: lateral.inference swaps in its own (OneDnnConv, Fp32FallbackConv3d, a folded
    # stem); the norm may become a SmallChannelBatchNorm3d, or None once folded into the conv
    conv: nn.Module
    bn: _BatchNorm | None
    activate: nn.Module | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
        dilation: int | tuple[int, int, int] = 1,
        bias: bool = False,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
    ):
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias
        )
        self.bn = make_norm(norm_cfg, out_channels) if norm_cfg is not None else None
        self.activate = make_activation(act_cfg) if act_cfg is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, T, H, W] -> [N, C_out, T', H', W']."""
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


def kaiming_init(module: _ConvNd) -> None:
    """mmcv's ``kaiming_init`` defaults: normal, fan_out, ReLU gain, zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def constant_init(module: _BatchNorm, value: float, bias: float = 0.0) -> None:
    nn.init.constant_(module.weight, value)
    if module.bias is not None:
        nn.init.constant_(module.bias, bias)


def triple(value: Any) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(value)
    if len(value) != 3:
        raise ConfigError(f"expected an int or 3 ints (t, h, w), got {value}")
    return value
