"""Conv + norm + activation unit with mmcv's ``ConvModule`` state-dict names (``conv``, ``bn``).

mmaction2 describes layers with ``conv_cfg`` / ``norm_cfg`` / ``act_cfg`` dicts. They are read here, once, into
plain ``nn.Conv3d`` / ``nn.BatchNorm3d`` / ``nn.ReLU`` objects so the rest of the model code stays ordinary PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _triple

from lateral.config import ConfigError, suggest
from lateral.models.batchnorm import batch_norm_small_channels, is_plain_batchnorm3d, uses_small_channel_path

__all__ = [
    "check_input_layout",
    "ConvModule",
    "make_norm",
    "make_activation",
    "check_conv_cfg",
    "bf16_conv3d_unsafe",
    "runs_bf16_on_cpu",
    "fold_stem_weight",
    "stack_stem_frames",
    "is_foldable_stem",
    "folded_stem_conv3d",
    "folded_stem_block",
    "framewise_pool_args",
    "unfold_stem_frames",
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
        raise ValueError(f"{where}: expected a {dims}-D {kind} {layout}, got shape {shape}{hint}")
    if x.shape[1] != in_channels:
        channels_last = "frames [N, T, H, W, C]" if video else "images [N, H, W, C]"
        raise ValueError(
            f"{where}: expected {in_channels} channels in dim 1 of {layout}, got shape {shape}"
            f" ({channels_last} must be permuted to {layout} first)"
        )
    if video and x.shape[2] < min_frames:
        raise ValueError(f"{where}: needs at least {min_frames} frames (dim 2), got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{where}: got an empty {kind} of shape {shape}; every dimension of {layout} must be >= 1")
    check_float_input(x, where)


def check_float_input(x: torch.Tensor, where: str) -> None:
    """Raise a ValueError for integer pixels: raw frames (uint8) must be normalised to float before a model."""
    if not x.is_floating_point():
        raise ValueError(f"{where}: expected float input, got {x.dtype}; raw frames must be normalised first "
                         "((x.float() - mean) / std, as lateral.engine.evaluate.prepare_inputs does with the "
                         "model's data_preprocessor)")

MAX_STEM_CHANNELS = 4  # input channels of a conv treated as a video stem (RGB, or RGB + one more)
STEM_FOLD = 4  # output frames per conv2d call in a folded bf16 stem (measured best of 2, 4, 8, 16)

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


def make_norm(norm_cfg: dict, num_features: int) -> nn.Module:
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


def bf16_conv3d_unsafe(kernel_size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether oneDNN's bf16 conv3d on CPU may compute this conv wrongly: a stride larger than a kernel size > 1.

    With torch 2.14.1 (oneDNN 3.12) on CPUs with native bf16 (AVX-512 BF16 / AMX), such convs return garbage or
    NaN, or corrupt the heap, depending on the shape: SlowFast's lateral convs (kernel 5 over time, stride alpha = 8)
    among them. Equal or smaller strides, 1-sized kernels and 2D convs were all correct in the same sweep, so only
    these convs are run in float32 (they are about 1.5 % of the seed SlowFast's multiply-adds).
    """
    return any(1 < k < s for k, s in zip(kernel_size, stride))


def runs_bf16_on_cpu(x: torch.Tensor) -> bool:
    """Whether a conv on ``x`` would run in bf16 on the CPU: ``x`` is bf16, or CPU autocast to bf16 is on."""
    if x.device.type != "cpu":
        return False
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def conv3d_in_fp32(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` computed in float32 (autocast off), returned in bf16 as the bf16 conv would have been."""
    bias = None if conv.bias is None else conv.bias.float()
    with torch.autocast("cpu", enabled=False):
        out = conv._conv_forward(x.float(), conv.weight.float(), bias)
    return out.to(torch.bfloat16)


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
    channels-last, the bf16 fast stem of SlowFast (training, batch 2, forward + backward) went from 181 to 138 ms.
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

    oneDNN's bf16 conv3d is slow for a stem's 3 input and 8 output channels: SlowFast's fast stem took 18 % of a
    bf16 training step on an AMX CPU. Here the ``kt + G - 1`` input frames that ``G`` consecutive output frames read
    are stacked into channels and a conv2d with :func:`fold_stem_weight` computes the G frames' ``G * C_out``
    channels together, at ``(kt + G - 1) / kt`` times the multiply-adds. The result equals ``conv(x)`` to rounding.

    x: [N, C_in, T, H, W] -> [N, C_out, T', H', W'] in x's memory format (channels-last-3d or contiguous).
    """
    frames_out = x.shape[2] + 2 * conv.padding[0] - conv.kernel_size[0] + 1
    channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    folded = _folded_stem_conv2d(conv, x, fold)
    return unfold_stem_frames(folded, x.shape[0], conv.out_channels, fold, frames_out, channels_last)


def _folded_stem_conv2d(conv: nn.Conv3d, x: torch.Tensor, fold: int) -> torch.Tensor:
    """The folded conv: x [N, C_in, T, H, W] -> [N * ceil(T' / G), G * C_out, H', W'] channels-last, where channel
    ``j * C_out + o`` of group g is output channel o at frame ``g * G + j``."""
    if runs_bf16_on_cpu(x) and x.dtype == torch.float32:
        x = x.to(torch.bfloat16)  # the conv2d would cast anyway; stacking bf16 frames moves half the bytes
    stacked = stack_stem_frames(x, conv.kernel_size[0], conv.padding[0], fold)
    weight = fold_stem_weight(conv.weight, fold).contiguous(memory_format=torch.channels_last)  # NHWC output
    bias = None if conv.bias is None else conv.bias.repeat(fold)
    return F.conv2d(stacked, weight, bias, conv.stride[1:], conv.padding[1:])


def unfold_stem_frames(folded: torch.Tensor, batch: int, out_channels: int, fold: int, frames_out: int,
                        channels_last: bool) -> torch.Tensor:
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


def folded_stem_block(stem: nn.Module, pool: nn.Module | None, x: torch.Tensor) -> torch.Tensor | None:
    """``pool(stem(x))`` for a bf16 video stem (conv, BatchNorm, ReLU) computed in the folded layout; None if the
    stem or input does not qualify (then run them as usual).

    :func:`folded_stem_conv3d` leaves the stem's output with 4 frames in its channels (``[N * T / 4, H', W',
    4 * C_out]``, 32 channels for SlowFast's fast pathway). The norm, the ReLU and a frame-wise max-pool are run in
    that layout (the norm with per-channel statistics over the 4 folded frames,
    :func:`lateral.models.batchnorm.batch_norm_on_view`), where 32 channels fill a vector register, and frames are
    unfolded only after the pool, at a quarter of the size. Differentiable; same outputs and running statistics.

    x: [N, C_in, T, H, W] -> [N, C_out, T', H'', W''] in x's memory format.
    """
    conv, bn, activate = stem.conv, stem.bn, stem.activate
    pool_args = None if pool is None else framewise_pool_args(pool)
    if (pool is not None and pool_args is None) or not is_foldable_stem(conv) or not runs_bf16_on_cpu(x):
        return None
    if bn is not None and not is_plain_batchnorm3d(bn):
        return None
    if activate is not None and type(activate) is not nn.ReLU:
        return None
    frames_out = x.shape[2] + 2 * conv.padding[0] - conv.kernel_size[0] + 1
    if frames_out % STEM_FOLD:  # padded groups would enter the norm's statistics
        return None
    return _stem_block_folded(stem, pool_args, x, STEM_FOLD)


def _stem_block_folded(stem: nn.Module, pool_args: dict | None, x: torch.Tensor, fold: int) -> torch.Tensor:
    """The computation of :func:`folded_stem_block` once it qualifies (any dtype; T' divisible by ``fold``)."""
    from lateral.models.batchnorm import batch_norm_on_view

    conv, bn, activate = stem.conv, stem.bn, stem.activate
    frames_out = x.shape[2] + 2 * conv.padding[0] - conv.kernel_size[0] + 1
    channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    folded = _folded_stem_conv2d(conv, x, fold)  # [N * T' / G, G * C_out, H', W'] channels-last
    groups, folded_channels, height, width = folded.shape
    if bn is not None:
        rows = folded.permute(0, 2, 3, 1).reshape(-1, folded_channels)  # view: column j * C_out + o
        folded = batch_norm_on_view(bn, rows, fold).view(groups, height, width, folded_channels).permute(0, 3, 1, 2)
    if activate is not None:
        folded = torch.relu(folded)
    if pool_args is not None:
        folded = F.max_pool2d(folded, **pool_args)
    return unfold_stem_frames(folded, x.shape[0], conv.out_channels, fold, frames_out, channels_last)


class ConvModule(nn.Module):
    """``Conv3d`` followed by an optional norm and an optional activation.

    Submodule names (``conv``, ``bn``, ``activate``) equal mmcv's so mmaction2 checkpoints load unchanged.
    """

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
        conv = self.conv
        if (
            isinstance(conv, nn.Conv3d)
            and bf16_conv3d_unsafe(conv.kernel_size, conv.stride)  # static, and false for almost every conv
            and runs_bf16_on_cpu(x)
        ):
            x = conv3d_in_fp32(conv, x)
        elif is_foldable_stem(conv) and runs_bf16_on_cpu(x):
            x = folded_stem_conv3d(conv, x)
        else:
            x = conv(x)
        if self.bn is not None:
            x = batch_norm_small_channels(self.bn, x) if uses_small_channel_path(self.bn, x) else self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


def kaiming_init(module: nn.Module) -> None:
    """mmcv's ``kaiming_init`` defaults: normal, fan_out, ReLU gain, zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def constant_init(module: nn.Module, value: float, bias: float = 0.0) -> None:
    nn.init.constant_(module.weight, value)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)


def triple(value: Any) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(value)
    if len(value) != 3:
        raise ConfigError(f"expected an int or 3 ints (t, h, w), got {value}")
    return value  # type: ignore[return-value]
