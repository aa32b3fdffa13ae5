"""2D ResNet bottom-up for feature pyramids: torchvision's ResNet stages, returned as named C2..C5 maps.

The stages are torchvision's own ``BasicBlock`` / ``Bottleneck`` modules, so the state-dict names are
torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...) and its checkpoints load unchanged. What this file adds
is the feature contract (:attr:`ResNetTrunk.feature_info`: name, channels and stride of every returned map) and
torchvision's layer freezing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops.misc import FrozenBatchNorm2d

from lateral.config import ConfigError, suggest
from lateral.models.layers import check_input_layout

__all__ = ["FeatureSpec", "ResNetTrunk", "ARCH_SETTINGS", "NORM_LAYERS", "make_norm2d"]

# depth -> (residual block, number of blocks in stages C2..C5), as in torchvision's resnet builders
ARCH_SETTINGS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}

NORM_LAYERS = ("BN", "FrozenBN", "GN")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature map a backbone returns.

    Attributes:
        name: the key in the returned dict (``'c2'``, ``'0'``, ``'p3'``, ...).
        channels: number of channels of the map.
        stride: input pixels per feature-map pixel (4 for C2/P2, 32 for C5/P5).
    """

    name: str
    channels: int
    stride: int


def make_norm2d(norm: str, num_features: int) -> nn.Module:
    """A 2D norm layer by name: ``'BN'`` (trainable batch norm), ``'FrozenBN'`` (fixed affine statistics, as in
    torchvision's detection backbones) or ``'GN'`` (32 groups)."""
    if norm == "BN":
        return nn.BatchNorm2d(num_features)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(num_features)
    if norm == "GN":
        return nn.GroupNorm(32, num_features)
    raise ConfigError(f"unknown norm '{norm}'.{suggest(norm, NORM_LAYERS)} Expected one of {', '.join(NORM_LAYERS)}")


class ResNetTrunk(nn.Module):
    """The convolutional part of a torchvision ResNet (no pooling head, no classifier) returning stage outputs.

    Stages after the deepest returned one are not built, exactly as torchvision's ``IntermediateLayerGetter``
    drops them, so state-dict keys match ``resnet_fpn_backbone(...).body``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        returned_layers: stage numbers to return, 1..4 (stage k is C(k+1), stride 2**(k+1)).
        norm: norm layer of the trunk, see :func:`make_norm2d`.
        trainable_layers: how many of ``layer4, layer3, layer2, layer1, conv1`` (counted from the top) keep
            trainable parameters; 5 also trains ``bn1``. The rest get ``requires_grad=False``.
        out_names: the key of each returned map, one per entry of ``returned_layers`` (default ``c2``..``c5``).
    """

    def __init__(
        self,
        depth: int = 50,
        returned_layers: Sequence[int] = (1, 2, 3, 4),
        norm: str = "FrozenBN",
        trainable_layers: int = 3,
        out_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ConfigError(f"ResNet depth {depth} is not available; choose one of {sorted(ARCH_SETTINGS)}")
        returned_layers = [int(k) for k in returned_layers]
        if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > 4:
            raise ConfigError(f"returned_layers must be stage numbers in 1..4, got {returned_layers}")
        if sorted(set(returned_layers)) != returned_layers:
            raise ConfigError(f"returned_layers must be increasing and unique, got {returned_layers}")
        if not 0 <= trainable_layers <= 5:
            raise ConfigError(f"trainable_layers must be in 0..5, got {trainable_layers}")
        make_norm2d(norm, 64)  # fail early on a bad name, before building 50 layers
        out_names = [f"c{k + 1}" for k in returned_layers] if out_names is None else list(out_names)
        if len(out_names) != len(returned_layers):
            raise ConfigError(f"out_names {out_names} must have one name per returned layer {returned_layers}")

        block, stage_blocks = ARCH_SETTINGS[depth]
        full = ResNet(block, list(stage_blocks), norm_layer=lambda channels: make_norm2d(norm, channels))
        self.conv1 = full.conv1
        self.bn1 = full.bn1
        self.relu = full.relu
        self.maxpool = full.maxpool
        self.num_stages = max(returned_layers)
        for k in range(1, self.num_stages + 1):
            self.add_module(f"layer{k}", getattr(full, f"layer{k}"))

        self.returned_layers = returned_layers
        self._name_of_stage = dict(zip(returned_layers, out_names))
        self.feature_info = [
            FeatureSpec(name, 64 * 2 ** (k - 1) * block.expansion, 2 ** (k + 1))
            for name, k in zip(out_names, returned_layers)
        ]
        self._freeze(trainable_layers)

    def _freeze(self, trainable_layers: int) -> None:
        trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            trainable.append("bn1")
        for name, param in self.named_parameters():
            if not name.startswith(tuple(trainable)):
                param.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """x: [N, 3, H, W] -> ordered dict name -> [N, C_k, ceil(H / stride_k), ceil(W / stride_k)]."""
        check_input_layout(x, self.conv1.in_channels, type(self).__name__, video=False)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        for k in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{k}")(x)
            if k in self._name_of_stage:
                outputs[self._name_of_stage[k]] = x
        return outputs
