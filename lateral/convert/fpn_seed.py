"""Key map between the FPN seed's own module names and lateral's ``ResNetFPN(style='seed')``.

The seed's network (``FPN(layers)`` with ``Bottleneck`` blocks) names its tensors::

    conv1, bn1                                     the C1 stem
    layer{1..4}.{j}.bottleneck.{0,1,3,4,6,7}       conv/BN pairs inside an nn.Sequential (2 and 5 are ReLUs)
    layer{1..4}.0.downsample.{0,1}                 projection shortcut (conv, BN)
    toplayer                                       1x1 lateral of C5 (M5 = P5)
    latlayer1, latlayer2, latlayer3                1x1 laterals of C4, C3, C2
    smooth1, smooth2, smooth3                      3x3 convs producing P4, P3, P2

lateral keeps torchvision's names: ``body.*`` for the trunk, ``fpn.inner_blocks.{i}.0`` for the lateral of input i
(C2 first) and ``fpn.layer_blocks.{i}.0`` for the smoothing of level i (the seed smooths P2..P4 only).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from lateral.convert import BN_PARAMS, STAGE_BLOCKS, ConversionError, TensorMapping, apply_key_map, invert_key_map

__all__ = [
    "SEED_FPN_DEPTHS",
    "seed_fpn_key_map",
    "infer_seed_fpn_depth",
    "from_seed_fpn",
    "to_seed_fpn",
    "is_lateral_fpn_state",
]

SEED_FPN_DEPTHS = dict(STAGE_BLOCKS)  # FPN50 / FPN101 / FPN152: Bottleneck counts per stage

# position inside the seed's ``bottleneck`` Sequential -> lateral's Bottleneck attribute
_BRANCH_NAMES = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
# seed name -> lateral pyramid name; inputs are C2..C5 in lateral order
_PYRAMID_NAMES = {
    "toplayer": "fpn.inner_blocks.3.0",
    "latlayer1": "fpn.inner_blocks.2.0",
    "latlayer2": "fpn.inner_blocks.1.0",
    "latlayer3": "fpn.inner_blocks.0.0",
    "smooth1": "fpn.layer_blocks.2.0",
    "smooth2": "fpn.layer_blocks.1.0",
    "smooth3": "fpn.layer_blocks.0.0",
}


def _conv(source: str, target: str, with_bias: bool = False) -> list[TensorMapping]:
    names = ("weight", "bias") if with_bias else ("weight",)
    return [TensorMapping(f"{source}.{n}", f"{target}.{n}") for n in names]


def _bn(source: str, target: str) -> list[TensorMapping]:
    return [TensorMapping(f"{source}.{n}", f"{target}.{n}") for n in BN_PARAMS]


def seed_fpn_key_map(depth: int) -> list[TensorMapping]:
    """Every tensor of the seed's FPN``depth`` (source) and its lateral name (target), in lateral's order."""
    if depth not in SEED_FPN_DEPTHS:
        raise ConversionError(f"the seed's FPN exists for depths {sorted(SEED_FPN_DEPTHS)}, not {depth}")
    mappings = _conv("conv1", "body.conv1") + _bn("bn1", "body.bn1")
    for stage, num_blocks in enumerate(SEED_FPN_DEPTHS[depth], start=1):
        for block in range(num_blocks):
            source, target = f"layer{stage}.{block}", f"body.layer{stage}.{block}"
            for index, name in _BRANCH_NAMES.items():
                make = _conv if name.startswith("conv") else _bn
                mappings += make(f"{source}.bottleneck.{index}", f"{target}.{name}")
            if block == 0:  # every stage's first block changes the width (layer1: 64 -> 256) or the stride
                mappings += _conv(f"{source}.downsample.0", f"{target}.downsample.0")
                mappings += _bn(f"{source}.downsample.1", f"{target}.downsample.1")
    for source in ("latlayer3", "latlayer2", "latlayer1", "toplayer", "smooth3", "smooth2", "smooth1"):
        mappings += _conv(source, _PYRAMID_NAMES[source], with_bias=True)
    return mappings


def infer_seed_fpn_depth(state: Mapping[str, Any], source: str) -> int:
    """FPN50/101/152 from the number of blocks in ``layer3`` of a seed-layout state dict."""
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("layer3.") and k.split(".")[1].isdigit()}
    if not blocks or "toplayer.weight" not in state:
        raise ConversionError(
            f"{source} is not a checkpoint of the seed's FPN: expected 'toplayer.weight' and 'layer3.N...' tensors; "
            f"first names: {list(state)[:3]}"
        )
    depth = _depth_of_layer3(max(blocks) + 1)
    if depth is None:
        raise ConversionError(
            f"{source}: layer3 has {max(blocks) + 1} blocks; the seed's FPN50/101/152 have 6, 23 or 36"
        )
    return depth


def _depth_of_layer3(num_blocks: int) -> int | None:
    return next((depth for depth, counts in SEED_FPN_DEPTHS.items() if counts[2] == num_blocks), None)


def _lateral_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    from lateral.models.fpn import ResNetFPN

    model = ResNetFPN(depth=depth, style="seed")
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def from_seed_fpn(state: Mapping[str, Any], source: str = "checkpoint") -> tuple[OrderedDict[str, torch.Tensor], int]:
    """Seed-layout state dict -> (lateral ``ResNetFPN(style='seed')`` state dict, depth).

    Raises:
        ConversionError: naming the first tensor that is missing, left over or of the wrong shape.
    """
    depth = infer_seed_fpn_depth(state, source)
    desc = f"{source} (seed FPN{depth} layout)"
    return apply_key_map(state, seed_fpn_key_map(depth), _lateral_shapes(depth), desc), depth


def is_lateral_fpn_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is a lateral ``ResNetFPN`` (trunk under ``body.``, pyramid under ``fpn.``)."""
    return any(k.startswith("body.") for k in state) and any(k.startswith("fpn.") for k in state)


def to_seed_fpn(state: Mapping[str, Any], source: str = "checkpoint") -> tuple[OrderedDict[str, torch.Tensor], int]:
    """lateral ``ResNetFPN(style='seed')`` state dict -> (seed-layout state dict, depth)."""
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("body.layer3.")}
    depth = _depth_of_layer3(max(blocks) + 1) if blocks else None
    if depth is None or len([k for k in state if k.startswith("fpn.layer_blocks.") and k.endswith("weight")]) != 3:
        raise ConversionError(
            f"{source} is not a lateral ResNetFPN of style 'seed' with depth 50/101/152 (seed layout: P2..P4 "
            f"smoothed, no extra levels)"
        )
    inverted = invert_key_map(seed_fpn_key_map(depth))
    shapes = _lateral_shapes(depth)
    target_shapes = {m.target: shapes[m.source] for m in inverted if m.source is not None}  # all have one
    return apply_key_map(state, inverted, target_shapes, f"{source} (lateral FPN{depth})"), depth
