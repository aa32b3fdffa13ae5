"""Feature Pyramid Network (Lin et al., 2017) on a ResNet bottom-up.

Two layouts of the same idea:

* ``style='seed'``: the network of the FPN seed. 1x1 laterals bring C2..C5 to 256 channels, the top-down path
  upsamples (nearest) and adds, a 3x3 conv smooths P2..P4; P5 is the lateral of C5 itself. Outputs
  ``p2``..``p5``; trainable batch norm; FPN-50 has 26,262,336 parameters.
* ``style='torchvision'``: identical state-dict keys and outputs to
  ``torchvision.models.detection.backbone_utils.resnet_fpn_backbone``: every level smoothed, outputs ``'0'``..``'3'``
  plus ``'pool'`` (or ``'p6'``/``'p7'``), frozen batch norm and three trainable stages by default. ``out_channels``
  is set, so the module plugs into ``torchvision.models.detection.FasterRCNN`` as its backbone.

The pyramid upsamples to the lateral's exact size rather than by a factor of 2, so inputs whose sides are not
multiples of 32 work.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lateral.config import ConfigError, suggest
from lateral.models.resnet import FeatureSpec, ResNetTrunk, make_norm2d

__all__ = ["FeaturePyramid", "LastLevelMaxPool", "LastLevelP6P7", "ResNetFPN", "EXTRA_BLOCKS", "STYLES"]

STYLES = ("seed", "torchvision")
EXTRA_BLOCKS = ("maxpool", "p6p7", "p6p7_c5")

# style -> defaults for the options a config leaves out
_STYLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "seed": dict(trainable_layers=5, extra_blocks=None, body_norm="BN"),
    "torchvision": dict(trainable_layers=3, extra_blocks="maxpool", body_norm="FrozenBN"),
}


def _conv_block(in_channels: int, out_channels: int, kernel_size: int, norm: str | None) -> nn.Sequential:
    """conv (+ norm): the conv keeps its bias only without a norm, as torchvision's ``Conv2dNormActivation``."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm is None)
    ]
    if norm is not None:
        layers.append(make_norm2d(norm, out_channels))
    return nn.Sequential(*layers)


class LastLevelMaxPool(nn.Module):
    """Adds ``'pool'``: the top pyramid level subsampled by a stride-2, 1x1 max pool (Faster R-CNN's P6)."""

    names = ("pool",)

    def forward(self, pyramid: list[torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """pyramid[-1]: [N, C, H, W] -> [[N, C, ceil(H / 2), ceil(W / 2)]]."""
        return [F.max_pool2d(pyramid[-1], kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """Adds ``'p6'`` and ``'p7'`` (RetinaNet): a stride-2 3x3 conv, then ReLU and another stride-2 3x3 conv.

    Args:
        in_channels: channels of the map P6 is computed from.
        out_channels: channels of P6 and P7.
        from_top_input: compute P6 from the top backbone input (C5) instead of the top pyramid output (P5).
    """

    names = ("p6", "p7")

    def __init__(self, in_channels: int, out_channels: int, from_top_input: bool = False):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            assert conv.bias is not None  # built with bias=True
            nn.init.zeros_(conv.bias)
        self.from_top_input = from_top_input

    def forward(self, pyramid: list[torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """pyramid[-1] or inputs[-1]: [N, C, H, W] -> [P6 [N, C', H/2, W/2], P7 [N, C', H/4, W/4]] (ceil)."""
        source = inputs[-1] if self.from_top_input else pyramid[-1]
        p6 = self.p6(source)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class FeaturePyramid(nn.Module):
    """Top-down pathway with lateral connections.

    ``inner_blocks[i]`` is the 1x1 lateral of input i, ``layer_blocks[i]`` the 3x3 conv that smooths level i.

    Args:
        in_channels: channels of the inputs, finest first (C2, C3, ...).
        out_channels: channels of every output level (d in the paper, 256).
        smooth_top: smooth the top level too (torchvision); without it the top output is its lateral (seed).
        norm: optional norm after every FPN conv (``'BN'``, ``'GN'``, ``'FrozenBN'``).
        extra_blocks: a module adding levels above the top (:class:`LastLevelMaxPool`, :class:`LastLevelP6P7`).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        smooth_top: bool = True,
        norm: str | None = None,
        extra_blocks: nn.Module | None = None,
    ):
        super().__init__()
        if not in_channels:
            raise ConfigError("FeaturePyramid needs at least one input level")
        self.inner_blocks = nn.ModuleList(_conv_block(c, out_channels, 1, norm) for c in in_channels)
        num_smoothed = len(in_channels) if smooth_top else len(in_channels) - 1
        self.layer_blocks = nn.ModuleList(_conv_block(out_channels, out_channels, 3, norm) for _ in range(num_smoothed))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.extra_blocks = extra_blocks

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """inputs: [N, C_i, H_i, W_i], finest first -> levels [N, out_channels, H_i, W_i] (+ extra levels)."""
        top_down = self.inner_blocks[-1](inputs[-1])
        top = self.layer_blocks[-1](top_down) if len(self.layer_blocks) == len(inputs) else top_down
        outputs = [top]
        for i in range(len(inputs) - 2, -1, -1):
            lateral = self.inner_blocks[i](inputs[i])
            # by size, not scale_factor=2: a 7-pixel map must meet a 13-pixel lateral for odd input sizes
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.layer_blocks[i](top_down))
        if self.extra_blocks is not None:
            outputs.extend(self.extra_blocks(outputs, inputs))
        return outputs


class ResNetFPN(nn.Module):
    """ResNet bottom-up (``body``) + :class:`FeaturePyramid` (``fpn``).

    Args:
        depth: ResNet depth, 18/34/50/101/152 (FPN50, FPN101, FPN152 of the seed).
        style: ``'seed'`` or ``'torchvision'``: output names and defaults of the options below (see module doc).
        out_channels: channels of every pyramid level.
        returned_layers: ResNet stages feeding the pyramid, 1..4 (default all four: C2..C5).
        trainable_layers: trunk stages left trainable, counted from the top (default 5 for seed, 3 torchvision).
        extra_blocks: ``'maxpool'`` (adds ``'pool'``), ``'p6p7'`` (P6 from P5), ``'p6p7_c5'`` (P6 from C5) or
            None. Default: None for seed, ``'maxpool'`` for torchvision; pass ``'none'`` to drop it explicitly.
        body_norm: trunk norm, ``'BN'`` (trainable), ``'FrozenBN'`` or ``'GN'`` (default BN seed, FrozenBN
            torchvision).
        fpn_norm: norm after every pyramid conv, or None (both upstream layouts have none).

    Attributes:
        out_channels: channels of every output, read by torchvision's detection models.
        feature_info: :class:`FeatureSpec` (name, channels, stride) of every output, in output order.
        pyramid_info: the part of ``feature_info`` built from backbone stages (no extra levels): the maps that
            RoI pooling reads.
    """

    def __init__(
        self,
        depth: int = 50,
        style: str = "torchvision",
        out_channels: int = 256,
        returned_layers: Sequence[int] | None = None,
        trainable_layers: int | None = None,
        extra_blocks: str | None = "default",
        body_norm: str | None = None,
        fpn_norm: str | None = None,
    ):
        super().__init__()
        if style not in STYLES:
            raise ConfigError(f"unknown FPN style '{style}'.{suggest(style, STYLES)} Expected one of {STYLES}")
        defaults = _STYLE_DEFAULTS[style]
        trainable_layers = defaults["trainable_layers"] if trainable_layers is None else trainable_layers
        extra_blocks = defaults["extra_blocks"] if extra_blocks == "default" else extra_blocks
        extra_blocks = None if extra_blocks == "none" else extra_blocks
        body_norm = defaults["body_norm"] if body_norm is None else body_norm
        returned_layers = [1, 2, 3, 4] if returned_layers is None else [int(k) for k in returned_layers]
        if extra_blocks is not None and extra_blocks not in EXTRA_BLOCKS:
            raise ConfigError(
                f"unknown extra_blocks '{extra_blocks}'.{suggest(extra_blocks, EXTRA_BLOCKS)} "
                f"Expected one of {', '.join(EXTRA_BLOCKS)} or None"
            )

        level_names = (
            [f"p{k + 1}" for k in returned_layers] if style == "seed" else [str(i) for i in range(len(returned_layers))]
        )
        self.body = ResNetTrunk(depth, returned_layers, norm=body_norm, trainable_layers=trainable_layers)
        in_specs = self.body.feature_info
        extra: LastLevelMaxPool | LastLevelP6P7 | None = None
        if extra_blocks == "maxpool":
            extra = LastLevelMaxPool()
        elif extra_blocks == "p6p7":
            extra = LastLevelP6P7(out_channels, out_channels)
        elif extra_blocks == "p6p7_c5":
            extra = LastLevelP6P7(in_specs[-1].channels, out_channels, from_top_input=True)
        self.fpn = FeaturePyramid(
            [spec.channels for spec in in_specs],
            out_channels,
            smooth_top=style == "torchvision",
            norm=fpn_norm,
            extra_blocks=extra,
        )
        self.style = style
        self.out_channels = out_channels
        self.pyramid_info = [FeatureSpec(name, out_channels, spec.stride) for name, spec in zip(level_names, in_specs)]
        top_stride = in_specs[-1].stride
        extra_names = extra.names if extra is not None else ()
        self.feature_info = self.pyramid_info + [
            FeatureSpec(name, out_channels, top_stride * 2 ** (i + 1)) for i, name in enumerate(extra_names)
        ]

    def output_shape(self) -> dict[str, FeatureSpec]:
        """Name -> :class:`FeatureSpec` of every output, finest level first."""
        return {spec.name: spec for spec in self.feature_info}

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """x: [N, 3, H, W] -> ordered dict name -> [N, out_channels, ceil(H / stride), ceil(W / stride)]."""
        features = list(self.body(x).values())
        levels = self.fpn(features)
        return OrderedDict((spec.name, level) for spec, level in zip(self.feature_info, levels))
