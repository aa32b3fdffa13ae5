"""Which pyramid level a region of interest is pooled from (FPN paper, eq. 1), and multi-scale RoI pooling.

The pooling itself is ``torchvision.ops.roi_align``; this file decides the level of each box and the scale of
each level, the latter from the backbone's feature contract (strides) rather than guessed from map sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from lateral.errors import InputError

__all__ = ["roi_levels", "MultiScaleRoIPool"]


def roi_levels(
    boxes: torch.Tensor,
    k0: int = 4,
    canonical_size: float = 224.0,
    min_level: int = 2,
    max_level: int = 5,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Pyramid level of each box: ``k = floor(k0 + log2(sqrt(w * h) / canonical_size))``, clamped.

    A box of the ImageNet pre-training size (224 pixels square) goes to ``P_k0``; halving its side goes one
    level finer. With the defaults (k0=4, canonical 224, levels 2..5):

    ======================  ===========  =====
    sqrt(w * h), pixels      log2 term     k
    ======================  ===========  =====
    0 (degenerate box)       -inf          2
    1 .. 111                 < -1          2
    112 .. 223               -1 .. <0      3
    224 .. 447                0 .. <1      4
    448 .. 895                1 .. <2      5
    896 and larger            >= 2         5
    ======================  ===========  =====

    Boxes with zero or negative width or height get area ``eps**2`` instead of a NaN or ``-inf`` logarithm, so
    they land on ``min_level``. ``eps`` is also added inside the floor so that sizes exactly on a boundary (112,
    224, 448) are not pushed down a level by float rounding; torchvision's ``LevelMapper`` does the same.

    Args:
        boxes: [K, 4] boxes ``(x1, y1, x2, y2)`` in input-image pixels.
        k0: level of a box of ``canonical_size``.
        canonical_size: side of the box that maps to ``k0``.
        min_level: finest level (2 for P2).
        max_level: coarsest level (5 for P5).
        eps: guard for degenerate boxes and boundary rounding.

    Returns:
        [K] int64 levels in ``min_level..max_level``.
    """
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    sizes = torch.sqrt((widths * heights).clamp(min=eps * eps))
    levels = torch.floor(k0 + torch.log2(sizes / canonical_size) + eps)
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


class MultiScaleRoIPool(nn.Module):
    """RoIAlign over FPN levels, each box from the level :func:`roi_levels` picks.

    Call-compatible with ``torchvision.ops.MultiScaleRoIAlign`` (``forward(features, boxes, image_shapes)``), so
    it can be a torchvision ``RoIHeads``' ``box_roi_pool``; unlike it, the level scales come from the strides given
    here, not from rounding the ratio of feature-map to image size.

    Args:
        featmap_names: keys of the feature dict to pool from, finest first (``['0', '1', '2', '3']``).
        strides: stride of each of those maps (``[4, 8, 16, 32]``); level k has stride ``2**k``.
        output_size: pooled size (7 for the box head, 14 for a mask head).
        sampling_ratio: sampling points per bin side in RoIAlign (0: adaptive).
        canonical_size: see :func:`roi_levels`.
        canonical_level: ``k0`` of :func:`roi_levels`.
        aligned: half-pixel offset of RoIAlign (False in torchvision's detectors).
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        strides: Sequence[int],
        output_size: int | tuple[int, int] = 7,
        sampling_ratio: int = 2,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
        aligned: bool = False,
    ):
        super().__init__()
        if len(featmap_names) != len(strides) or not featmap_names:
            raise InputError(f"featmap_names {list(featmap_names)} and strides {list(strides)} must pair up")
        levels = [int(round(torch.log2(torch.tensor(float(s))).item())) for s in strides]
        if any(2**k != s for k, s in zip(levels, strides)) or levels != list(range(levels[0], levels[0] + len(levels))):
            raise InputError(f"strides must be consecutive powers of two (4, 8, 16, ...), got {list(strides)}")
        self.featmap_names = list(featmap_names)
        self.strides = [int(s) for s in strides]
        self.min_level, self.max_level = levels[0], levels[-1]
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level
        self.aligned = aligned

    def forward(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """features: name -> [N, C, H_k, W_k]; boxes: N tensors [K_i, 4] (x1, y1, x2, y2) in input pixels.

        Returns:
            [sum K_i, C, output_h, output_w], boxes in the order given (image after image).
        """
        maps = [features[name] for name in self.featmap_names]
        all_boxes = torch.cat(boxes, dim=0)
        batch_index = torch.cat(
            [torch.full((len(b), 1), i, dtype=all_boxes.dtype, device=all_boxes.device) for i, b in enumerate(boxes)]
        )
        rois = torch.cat([batch_index, all_boxes], dim=1)
        pooled = maps[0].new_zeros((len(rois), maps[0].shape[1], *self.output_size))
        if len(rois) == 0:
            return pooled
        levels = (
            roi_levels(all_boxes, self.canonical_level, self.canonical_size, self.min_level, self.max_level)
            - self.min_level
        )
        for index, (feature, stride) in enumerate(zip(maps, self.strides)):
            selected = torch.where(levels == index)[0]
            if len(selected) == 0:
                continue
            pooled[selected] = roi_align(
                feature,
                rois[selected],
                self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=self.aligned,
            ).to(pooled.dtype)
        return pooled
