"""3D ResNet (I3D-style inflated ResNet) with mmaction2's options, layer names and initialisation.

Blocks and stages follow torchvision's ``resnet.py``: ``BasicBlock3d`` and ``Bottleneck3d``, stacked by
``ResNet3d.make_res_layer``. State-dict names equal mmaction2's (``conv1.conv.weight``, ``layer1.0.conv2.bn.bias``,
``layer1.0.downsample.conv.weight``) so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils import checkpoint as activation_checkpoint

from lateral.checkpoint import CheckpointError, load_pretrained, local_checkpoint_path, read_state_dict
from lateral.config import ConfigError
from lateral.models.layers import (
    ConvModule,
    check_conv_cfg,
    check_input_layout,
    constant_init,
    kaiming_init,
    make_activation,
    triple,
)

__all__ = ["BasicBlock3d", "Bottleneck3d", "ResNet3d", "ResidualBlock3d", "check_video_input"]

logger = logging.getLogger(__name__)

DEFAULT_NORM_CFG = {"type": "BN3d", "requires_grad": True}
DEFAULT_ACT_CFG = {"type": "ReLU", "inplace": True}


def check_video_input(x: torch.Tensor, in_channels: int, where: str, min_frames: int = 1) -> None:
    """Raise a ValueError that names the expected layout if ``x`` is not ``[N, C, T, H, W]``."""
    check_input_layout(x, in_channels, where, video=True, min_frames=min_frames)


def _backbone_prefix(state: dict) -> str | None:
    """'backbone.' for the checkpoint of a whole recognizer or classifier (``backbone.*`` and ``cls_head.*`` keys)."""
    return "backbone." if any(k.startswith("backbone.") for k in state) else None


class ResidualBlock3d(nn.Module):
    """What both residual blocks share: the settings they keep, the style check and ``forward``.

    ``forward`` returns ``relu(_residual(x))``, where each block defines ``_residual`` (its convs plus the
    shortcut) and ``relu``; with ``with_cp`` (and a graph to build) ``_residual`` is recomputed
    in backward instead of keeping its activations.
    """

    expansion = 1
    relu: nn.Module
    _residual: Callable[[torch.Tensor], torch.Tensor]  # each block's convs plus its shortcut

    def __init__(
        self,
        inplanes: int,
        planes: int,
        spatial_stride: int,
        temporal_stride: int,
        dilation: int,
        style: str,
        inflate: bool,
        with_cp: bool,
    ):
        super().__init__()
        if style not in ("pytorch", "caffe"):
            raise ConfigError(f"style must be 'pytorch' or 'caffe', got '{style}'")
        self.inplanes = inplanes
        self.planes = planes
        self.spatial_stride = spatial_stride
        self.temporal_stride = temporal_stride
        self.dilation = dilation
        self.style = style
        self.inflate = inflate
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, T, H, W] -> [N, expansion * planes, T / temporal_stride, H / spatial_stride,
        W / spatial_stride]."""
        if self.with_cp and x.requires_grad:
            out = activation_checkpoint.checkpoint(self._residual, x, use_reentrant=False)
        else:
            out = self._residual(x)
        return self.relu(out)


class BasicBlock3d(ResidualBlock3d):
    """Two 3x3 convs (3x3x3 when inflated) with a residual connection.

    Args:
        inplanes: input channels.
        planes: output channels (``expansion`` is 1).
        spatial_stride: stride in H and W of the first conv.
        temporal_stride: stride in T of the first conv.
        dilation: spatial dilation of the first conv.
        downsample: the projection applied to the identity branch, or None.
        style: 'pytorch' or 'caffe' (kept for config compatibility; both put the stride on the first conv here).
        inflate: use a temporal kernel of 3 instead of 1.
        inflate_style: accepted for compatibility with Bottleneck3d; unused.
        norm_cfg, act_cfg: mmcv-style norm and activation descriptions.
        with_cp: recompute the block in backward to save memory (activation checkpointing).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        inflate: bool = True,
        inflate_style: str = "3x1x1",
        norm_cfg: dict = DEFAULT_NORM_CFG,
        act_cfg: dict = DEFAULT_ACT_CFG,
        with_cp: bool = False,
    ):
        super().__init__(inplanes, planes, spatial_stride, temporal_stride, dilation, style, inflate, with_cp)
        kernel_t, pad_t = (3, 1) if inflate else (1, 0)
        self.conv1 = ConvModule(
            inplanes,
            planes,
            (kernel_t, 3, 3),
            stride=(temporal_stride, spatial_stride, spatial_stride),
            padding=(pad_t, dilation, dilation),
            dilation=(1, dilation, dilation),
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
        )
        self.conv2 = ConvModule(
            planes, planes * self.expansion, (kernel_t, 3, 3), padding=(pad_t, 1, 1), norm_cfg=norm_cfg, act_cfg=None
        )
        self.downsample = downsample
        self.relu = make_activation(act_cfg)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x)) + identity


class Bottleneck3d(ResidualBlock3d):
    """1x1 -> 3x3 -> 1x1 bottleneck with a residual connection, inflated in time by ``inflate_style``.

    ``inflate_style='3x1x1'`` puts the temporal kernel of 3 on the first 1x1 conv (SlowFast, I3D);
    ``'3x3x3'`` puts it on the 3x3 conv. ``style='pytorch'`` strides the 3x3 conv, ``'caffe'`` the first 1x1.
    Arguments as in :class:`BasicBlock3d`; ``expansion`` is 4.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        inflate: bool = True,
        inflate_style: str = "3x1x1",
        norm_cfg: dict = DEFAULT_NORM_CFG,
        act_cfg: dict = DEFAULT_ACT_CFG,
        with_cp: bool = False,
    ):
        super().__init__(inplanes, planes, spatial_stride, temporal_stride, dilation, style, inflate, with_cp)
        if inflate_style not in ("3x1x1", "3x3x3"):
            raise ConfigError(f"inflate_style must be '3x1x1' or '3x3x3', got '{inflate_style}'")
        self.inflate_style = inflate_style
        if style == "pytorch":
            conv1_stride, conv2_stride = (1, 1, 1), (temporal_stride, spatial_stride, spatial_stride)
        else:
            conv1_stride, conv2_stride = (temporal_stride, spatial_stride, spatial_stride), (1, 1, 1)
        if inflate and inflate_style == "3x1x1":
            conv1_kernel, conv1_padding = (3, 1, 1), (1, 0, 0)
            conv2_kernel, conv2_padding = (1, 3, 3), (0, dilation, dilation)
        elif inflate:
            conv1_kernel, conv1_padding = (1, 1, 1), (0, 0, 0)
            conv2_kernel, conv2_padding = (3, 3, 3), (1, dilation, dilation)
        else:
            conv1_kernel, conv1_padding = (1, 1, 1), (0, 0, 0)
            conv2_kernel, conv2_padding = (1, 3, 3), (0, dilation, dilation)
        self.conv1 = ConvModule(
            inplanes, planes, conv1_kernel, conv1_stride, conv1_padding, norm_cfg=norm_cfg, act_cfg=act_cfg
        )
        self.conv2 = ConvModule(
            planes,
            planes,
            conv2_kernel,
            conv2_stride,
            conv2_padding,
            dilation=(1, dilation, dilation),
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
        )
        self.conv3 = ConvModule(planes, planes * self.expansion, 1, norm_cfg=norm_cfg, act_cfg=None)
        self.downsample = downsample
        self.relu = make_activation(act_cfg)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x))) + identity


def _per_block(value: int | Sequence[int], num_blocks: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * num_blocks
    value = tuple(value)
    if len(value) != num_blocks:
        raise ConfigError(f"{name} lists {len(value)} values for a stage of {num_blocks} blocks")
    return value


class ResNet3d(nn.Module):
    """Inflated 3D ResNet backbone (mmaction2's ``ResNet3d``).

    Args:
        depth: 18, 34, 50, 101 or 152; picks the block and the blocks per stage from ``arch_settings``.
        pretrained: path of a checkpoint loaded by :meth:`init_weights` (2D and inflated if ``pretrained2d``).
        stage_blocks: blocks per stage, overriding the depth's default.
        pretrained2d: the ``pretrained`` file is a 2D (torchvision-layout) ResNet to inflate.
        in_channels: input channels (3 for RGB).
        num_stages: residual stages to build (1..4).
        base_channels: channels of the stem; stage i has ``base_channels * 2**i`` planes.
        out_indices: stages whose outputs ``forward`` returns.
        spatial_strides, temporal_strides, dilations: per stage.
        conv1_kernel: stem kernel (t, h, w).
        conv1_stride_s, conv1_stride_t: stem conv strides.
        pool1_stride_s, pool1_stride_t: stem max-pool strides.
        with_pool1: max-pool after the stem.
        with_pool2: temporal max-pool (2x1x1) after the first stage.
        style: 'pytorch' (stride on the 3x3 conv) or 'caffe' (stride on the first 1x1 conv).
        frozen_stages: stages whose parameters are frozen and whose BN is kept in eval mode (0 = stem only,
            -1 = none).
        inflate: per stage (or per block), use a temporal kernel of 3 in the block.
        inflate_style: '3x1x1' or '3x3x3'.
        conv_cfg, norm_cfg, act_cfg: mmcv-style layer descriptions.
        norm_eval: keep every BatchNorm in eval mode while training (frozen statistics).
        with_cp: activation checkpointing in every block.
        zero_init_residual: start every block's last BN at zero so each block begins as the identity.
        lateral_inplanes: extra input channels per stage, used by SlowFast's lateral concatenation.
    """

    arch_settings: ClassVar[dict[int, tuple[type[BasicBlock3d | Bottleneck3d], tuple[int, ...]]]] = {
        18: (BasicBlock3d, (2, 2, 2, 2)),
        34: (BasicBlock3d, (3, 4, 6, 3)),
        50: (Bottleneck3d, (3, 4, 6, 3)),
        101: (Bottleneck3d, (3, 4, 23, 3)),
        152: (Bottleneck3d, (3, 8, 36, 3)),
    }
    # an nn.MaxPool3d; nn.Identity once a folded stem has taken the pool over (lateral.inference)
    maxpool: nn.Module

    def __init__(
        self,
        depth: int = 50,
        pretrained: str | None = None,
        stage_blocks: Sequence[int] | None = None,
        pretrained2d: bool = True,
        in_channels: int = 3,
        num_stages: int = 4,
        base_channels: int = 64,
        out_indices: Sequence[int] = (3,),
        spatial_strides: Sequence[int] = (1, 2, 2, 2),
        temporal_strides: Sequence[int] = (1, 1, 1, 1),
        dilations: Sequence[int] = (1, 1, 1, 1),
        conv1_kernel: Sequence[int] = (3, 7, 7),
        conv1_stride_s: int = 2,
        conv1_stride_t: int = 1,
        pool1_stride_s: int = 2,
        pool1_stride_t: int = 1,
        with_pool1: bool = True,
        with_pool2: bool = True,
        style: str = "pytorch",
        frozen_stages: int = -1,
        inflate: Sequence[int | Sequence[int]] = (1, 1, 1, 1),
        inflate_style: str = "3x1x1",
        conv_cfg: dict | None = None,
        norm_cfg: dict = DEFAULT_NORM_CFG,
        act_cfg: dict = DEFAULT_ACT_CFG,
        norm_eval: bool = False,
        with_cp: bool = False,
        zero_init_residual: bool = True,
        lateral_inplanes: Sequence[int] = (0, 0, 0, 0),
    ):
        super().__init__()
        check_conv_cfg(conv_cfg)
        self._check_stage_settings(
            depth,
            num_stages,
            out_indices,
            spatial_strides=spatial_strides,
            temporal_strides=temporal_strides,
            dilations=dilations,
            inflate=inflate,
        )
        self.depth = depth
        self.pretrained = pretrained
        self.pretrained2d = pretrained2d
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.num_stages = num_stages
        self.out_indices = tuple(out_indices)
        self.spatial_strides = tuple(spatial_strides)
        self.temporal_strides = tuple(temporal_strides)
        self.dilations = tuple(dilations)
        self.conv1_kernel = triple(conv1_kernel)
        self.conv1_stride_s = conv1_stride_s
        self.conv1_stride_t = conv1_stride_t
        self.pool1_stride_s = pool1_stride_s
        self.pool1_stride_t = pool1_stride_t
        self.with_pool1 = with_pool1
        self.with_pool2 = with_pool2
        self.style = style
        self.frozen_stages = frozen_stages
        self.stage_inflations = tuple(inflate)
        self.inflate_style = inflate_style
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.zero_init_residual = zero_init_residual

        self.block, default_blocks = self.arch_settings[depth]
        self.stage_blocks = tuple(stage_blocks) if stage_blocks is not None else default_blocks[:num_stages]
        if len(self.stage_blocks) != num_stages:
            raise ConfigError(f"stage_blocks {self.stage_blocks} must have num_stages={num_stages} entries")
        lateral_inplanes = tuple(lateral_inplanes) + (0,) * (num_stages - len(lateral_inplanes))
        self._make_stem()
        self.res_layers: list[str] = []
        self._make_stages(lateral_inplanes)
        self.feat_dim = self.block.expansion * base_channels * 2 ** (len(self.stage_blocks) - 1)

    def _check_stage_settings(
        self, depth: int, num_stages: int, out_indices: Sequence[int], **per_stage: Sequence[object]
    ) -> None:
        """Refuse a depth without an architecture, a stage count outside 1..4, an out index past the last stage
        and per-stage settings (strides, dilations, inflate) with fewer entries than stages."""
        if depth not in self.arch_settings:
            raise ConfigError(f"invalid depth {depth} for ResNet3d; choose one of {sorted(self.arch_settings)}")
        if not 1 <= num_stages <= 4:
            raise ConfigError(f"num_stages must be 1..4, got {num_stages}")
        if max(out_indices) >= num_stages:
            raise ConfigError(f"out_indices {tuple(out_indices)} name a stage beyond num_stages={num_stages}")
        for name, values in per_stage.items():
            if len(values) < num_stages:
                raise ConfigError(f"{name} has {len(values)} entries, fewer than num_stages={num_stages}")

    def _make_stem(self) -> None:
        """``conv1`` (the stem conv), ``maxpool`` after it and ``pool2`` (temporal, after the first stage)."""
        self.conv1 = ConvModule(
            self.in_channels,
            self.base_channels,
            self.conv1_kernel,
            stride=(self.conv1_stride_t, self.conv1_stride_s, self.conv1_stride_s),
            padding=triple([(k - 1) // 2 for k in self.conv1_kernel]),
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg,
        )
        self.maxpool = nn.MaxPool3d(
            kernel_size=(1, 3, 3),
            stride=(self.pool1_stride_t, self.pool1_stride_s, self.pool1_stride_s),
            padding=(0, 1, 1),
        )
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))

    def _make_stages(self, lateral_inplanes: Sequence[int]) -> None:
        """``layer1`` .. ``layerN``; stage i has ``base_channels * 2**i`` planes and takes ``lateral_inplanes[i]``
        extra input channels (SlowFast's fused fast pathway)."""
        inplanes = self.base_channels
        for i, num_blocks in enumerate(self.stage_blocks):
            planes = self.base_channels * 2**i
            res_layer = self.make_res_layer(
                self.block,
                inplanes + lateral_inplanes[i],
                planes,
                num_blocks,
                spatial_stride=self.spatial_strides[i],
                temporal_stride=self.temporal_strides[i],
                dilation=self.dilations[i],
                style=self.style,
                inflate=self.stage_inflations[i],
                inflate_style=self.inflate_style,
                norm_cfg=self.norm_cfg,
                act_cfg=self.act_cfg,
                with_cp=self.with_cp,
            )
            inplanes = planes * self.block.expansion
            self.add_module(f"layer{i + 1}", res_layer)
            self.res_layers.append(f"layer{i + 1}")

    @staticmethod
    def make_res_layer(
        block: type[BasicBlock3d] | type[Bottleneck3d],
        inplanes: int,
        planes: int,
        blocks: int,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        dilation: int = 1,
        style: str = "pytorch",
        inflate: int | Sequence[int] = 1,
        inflate_style: str = "3x1x1",
        norm_cfg: dict = DEFAULT_NORM_CFG,
        act_cfg: dict = DEFAULT_ACT_CFG,
        with_cp: bool = False,
    ) -> nn.Sequential:
        """Stack ``blocks`` residual blocks; the first one strides and, if shapes change, projects the identity."""
        inflate = _per_block(inflate, blocks, "inflate")
        downsample = None
        if spatial_stride != 1 or inplanes != planes * block.expansion:
            downsample = ConvModule(
                inplanes,
                planes * block.expansion,
                1,
                stride=(temporal_stride, spatial_stride, spatial_stride),
                norm_cfg=norm_cfg,
                act_cfg=None,
            )
        layers = []
        for i in range(blocks):
            layers.append(
                block(
                    inplanes if i == 0 else planes * block.expansion,
                    planes,
                    spatial_stride if i == 0 else 1,
                    temporal_stride if i == 0 else 1,
                    dilation,
                    downsample if i == 0 else None,
                    style=style,
                    inflate=inflate[i] == 1,
                    inflate_style=inflate_style,
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                    with_cp=with_cp,
                )
            )
        return nn.Sequential(*layers)

    @property
    def feature_info(self) -> list[dict]:
        """What ``forward`` returns: one entry per ``out_indices`` stage with its name, channels and stride."""
        info = []
        stride = self.conv1_stride_s * (self.pool1_stride_s if self.with_pool1 else 1)
        for i in range(self.num_stages):
            stride *= self.spatial_strides[i]
            if i in self.out_indices:
                channels = self.block.expansion * self.base_channels * 2**i
                info.append({"name": f"layer{i + 1}", "channels": channels, "spatial_stride": stride})
        return info

    # ---------------------------------------------------------------- weights

    def _inflatable_modules(self):
        """(name, ConvModule) pairs that have a 2D counterpart in a torchvision ResNet."""
        for name, module in self.named_modules():
            if isinstance(module, ConvModule):
                yield name, module

    @staticmethod
    def _torchvision_names(name: str) -> tuple[str, str]:
        """Our ConvModule name -> (torchvision conv name, torchvision BN name)."""
        if "downsample" in name:
            return name + ".0", name + ".1"  # layer1.0.downsample -> layer1.0.downsample.0 / .1
        return name, name.replace("conv", "bn")  # layer1.0.conv2 -> layer1.0.conv2 / layer1.0.bn2

    def inflate_weights(self, state_dict_2d: dict[str, torch.Tensor]) -> dict[str, list[str]]:
        """Copy a torchvision-layout 2D ResNet into this 3D network.

        Each 2D kernel ``[O, I, kh, kw]`` is repeated ``kt`` times along time and divided by ``kt`` (so a static
        clip gives the 2D network's response); input channels the 2D kernel lacks (SlowFast's lateral
        concatenation) are zero. BatchNorm parameters and statistics are copied.

        Returns:
            A report: ``{'loaded': [2D names used], 'skipped': [our modules left as initialised, with why],
            'unused': [2D names not used]}``.
        """
        loaded: list[str] = []
        skipped: list[str] = []
        for name, module in self._inflatable_modules():
            conv_name, bn_name = self._torchvision_names(name)
            if conv_name + ".weight" not in state_dict_2d:
                skipped.append(f"{name}: no '{conv_name}.weight' in the 2D checkpoint")
            else:
                reason = self._inflate_conv(module.conv, state_dict_2d, conv_name, loaded)
                if reason:
                    skipped.append(f"{name}: {reason}")
            if module.bn is None:
                continue
            if bn_name + ".weight" not in state_dict_2d:
                skipped.append(f"{name}.bn: no '{bn_name}.weight' in the 2D checkpoint")
            else:
                reason = self._inflate_bn(module.bn, state_dict_2d, bn_name, loaded)
                if reason:
                    skipped.append(f"{name}.bn: {reason}")
        unused = sorted(set(state_dict_2d) - set(loaded))
        return {"loaded": loaded, "skipped": skipped, "unused": unused}

    @staticmethod
    def _inflate_conv(conv3d: nn.Conv3d, state_dict_2d: dict, name_2d: str, loaded: list[str]) -> str | None:
        weight_2d = state_dict_2d[name_2d + ".weight"]
        out_3d, in_3d, kernel_t, kh, kw = conv3d.weight.shape
        if weight_2d.dim() != 4 or weight_2d.shape[0] != out_3d or tuple(weight_2d.shape[2:]) != (kh, kw):
            return f"shape {list(weight_2d.shape)} of '{name_2d}.weight' does not fit {list(conv3d.weight.shape)}"
        in_2d = weight_2d.shape[1]
        if in_2d > in_3d:
            return f"'{name_2d}.weight' has {in_2d} input channels, more than the {in_3d} of the 3D conv"
        if in_2d < in_3d:  # lateral channels concatenated after the 2D network's own
            pad = weight_2d.new_zeros((out_3d, in_3d - in_2d, kh, kw))
            weight_2d = torch.cat((weight_2d, pad), dim=1)
        with torch.no_grad():
            conv3d.weight.copy_(weight_2d.unsqueeze(2).expand_as(conv3d.weight) / kernel_t)
        loaded.append(name_2d + ".weight")
        if conv3d.bias is not None and name_2d + ".bias" in state_dict_2d:
            with torch.no_grad():
                conv3d.bias.copy_(state_dict_2d[name_2d + ".bias"])
            loaded.append(name_2d + ".bias")
        return None

    @staticmethod
    def _inflate_bn(bn: _BatchNorm, state_dict_2d: dict, name_2d: str, loaded: list[str]) -> str | None:
        """Copy a 2D BatchNorm into ``bn``; the reason it was left as initialised (another width), else None."""
        source_weight = state_dict_2d[name_2d + ".weight"]
        if source_weight.shape != bn.weight.shape:
            return f"'{name_2d}.weight' has shape {list(source_weight.shape)}, the 3D network {list(bn.weight.shape)}"
        for param_name, tensor in list(bn.named_parameters()) + list(bn.named_buffers()):
            key = f"{name_2d}.{param_name}"
            if key in state_dict_2d and state_dict_2d[key].shape == tensor.shape:
                with torch.no_grad():
                    tensor.copy_(state_dict_2d[key])
                loaded.append(key)
        return None

    def init_weights(self, pretrained: str | None = None) -> dict | None:
        """Initialise from scratch (Kaiming convs, unit BN, zero last BN per block) or from ``pretrained``.

        Returns:
            The inflation report of :meth:`inflate_weights` when a 2D checkpoint was inflated, else None.
        """
        if pretrained:
            self.pretrained = pretrained
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                kaiming_init(m)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                constant_init(m, 1.0)
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck3d) and m.conv3.bn is not None:
                    constant_init(m.conv3.bn, 0.0)
                elif isinstance(m, BasicBlock3d) and m.conv2.bn is not None:
                    constant_init(m.conv2.bn, 0.0)
        self._freeze_stages()
        if self.pretrained is None:
            return None

        name = type(self).__name__
        path = local_checkpoint_path(self.pretrained, f"{name}.pretrained")
        state = read_state_dict(path)
        prefix = _backbone_prefix(state)
        if not self.pretrained2d:
            if any(k.startswith(f"{prefix or ''}slow_path.") for k in state):
                raise CheckpointError(
                    f"{name}.pretrained={path} holds a whole SlowFast backbone (slow_path.*, "
                    "fast_path.*): set it as the ResNet3dSlowFast's pretrained, not a pathway's"
                )
            conv1 = state.get(f"{prefix or ''}conv1.weight")
            if conv1 is not None and conv1.dim() == 4:
                raise CheckpointError(
                    f"{name}.pretrained={path} holds a 2D ResNet (conv1.weight "
                    f"{list(conv1.shape)}), but pretrained2d=False: set pretrained2d=True to inflate it"
                )
            load_pretrained(self, path, f"{name}.pretrained (pretrained2d=False)", prefix=prefix, state=state)
            return None
        state_2d = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} if prefix else state
        report = self.inflate_weights(state_2d)
        if not [k for k in report["loaded"] if not k.endswith("num_batches_tracked")]:  # counters are no weights
            misfits = [
                reason
                for reason in report["skipped"]
                if "does not fit" in reason or "channels" in reason or "has shape" in reason
            ]
            why = (
                f"none of its tensors fits this network ({misfits[0]})"
                if misfits
                else f"it holds no torchvision-layout 2D ResNet keys (conv1.weight, layer1.0.conv1.weight, ...); its "
                f"first keys: {list(state_2d)[:4]}"
            )
            raise CheckpointError(
                f"{name}.pretrained={path}: nothing could be inflated, because {why}. A 3D "
                "checkpoint of this network needs pretrained2d=False."
            )
        if report["skipped"]:
            warnings.warn(
                f"{name}: inflated {len(report['loaded'])} tensors from {path}; {len(report['skipped'])} "
                f"modules keep their initialisation ({'; '.join(report['skipped'][:3])})",
                stacklevel=2,
            )
        logger.info(
            "inflated %d tensors from %s; %d 2D tensors unused", len(report["loaded"]), path, len(report["unused"])
        )
        return report

    # ---------------------------------------------------------------- train / forward

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> ResNet3d:
        """Switch mode, keeping frozen stages (and every BN if ``norm_eval``) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward_stem(self, x: torch.Tensor, pool: bool | None = None) -> torch.Tensor:
        """``conv1``, then ``maxpool`` if ``pool`` (default: ``with_pool1``): [N, C, T, H, W] -> layer1's input."""
        pool = self.with_pool1 if pool is None else pool
        x = self.conv1(x)
        return self.maxpool(x) if pool else x

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """x: [N, C, T, H, W] -> the ``out_indices`` stage features, e.g. [N, 2048, T, H/32, W/32]."""
        check_video_input(x, self.in_channels, type(self).__name__)
        x = self.forward_stem(x)
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i == 0 and self.with_pool2:
                x = self.pool2(x)
            if i in self.out_indices:
                outs.append(x)
        return outs[0] if len(outs) == 1 else tuple(outs)
