"""The RoI -> pyramid level rule and multi-scale RoI pooling."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from lateral.models.roi import MultiScaleRoIPool, roi_levels


def square(side: float, x: float = 0.0) -> list[float]:
    return [x, 0.0, x + side, side]


@pytest.mark.parametrize(
    "box, level",
    [
        (square(0.0), 2),  # degenerate point
        ([10.0, 10.0, 10.0, 50.0], 2),  # zero width
        ([50.0, 50.0, 10.0, 10.0], 2),  # inverted corners: negative width and height
        (square(1.0), 2),  # tiny
        (square(111.0), 2),
        (square(112.0), 3),  # exactly 224 / 2
        (square(223.0), 3),
        (square(224.0), 4),  # canonical ImageNet size -> k0
        (square(447.0), 4),
        (square(448.0), 5),
        (square(896.0), 5),  # would be P6; clamped
        (square(100000.0), 5),  # huge
        ([0.0, 0.0, 448.0, 112.0], 4),  # sqrt(448 * 112) = 224
    ],
)
def test_level_table(box, level):
    assert roi_levels(torch.tensor([box])).tolist() == [level]


def test_levels_are_finite_integers_and_follow_custom_parameters():
    boxes = torch.tensor([square(0.0), square(64.0), square(128.0), square(256.0), square(5000.0)])
    levels = roi_levels(boxes, k0=5, canonical_size=128, min_level=3, max_level=6)
    assert levels.dtype == torch.int64
    assert levels.tolist() == [3, 4, 5, 6, 6]


def test_levels_agree_with_torchvision_level_mapper():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(500, 2, generator=generator) * 400
    sizes = torch.rand(500, 2, generator=generator) ** 3 * 900
    boxes = torch.cat([corners, corners + sizes], dim=1)
    expected = LevelMapper(k_min=2, k_max=5)([boxes]) + 2
    assert torch.equal(roi_levels(boxes), expected)


def test_pooling_equals_torchvision_multiscale_roi_align():
    generator = torch.Generator().manual_seed(1)
    features = {str(i): torch.randn(2, 8, 64 // 2**i, 96 // 2**i, generator=generator) for i in range(4)}
    boxes = [
        torch.tensor([[1.0, 2.0, 30.0, 40.0], [0.0, 0.0, 250.0, 250.0], [10.0, 10.0, 10.0, 10.0]]),
        torch.tensor([[5.0, 5.0, 200.0, 120.0], [3.0, 3.0, 60.0, 250.0], [0.0, 0.0, 383.0, 255.0]]),
    ]
    image_shapes = [(256, 384), (256, 384)]
    expected = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, image_shapes)
    pooled = MultiScaleRoIPool(["0", "1", "2", "3"], [4, 8, 16, 32], 7, 2)(features, boxes, image_shapes)
    assert pooled.shape == (6, 8, 7, 7)
    torch.testing.assert_close(pooled, expected)
    # the large box must come from P5: pooling P2 alone would give something else
    assert not torch.allclose(pooled[5], MultiScaleRoIPool(["0"], [4])(features, [boxes[1][2:]])[0])


def test_pooling_no_boxes_and_bad_strides():
    features = {"p2": torch.randn(1, 4, 16, 16), "p3": torch.randn(1, 4, 8, 8)}
    pool = MultiScaleRoIPool(["p2", "p3"], [4, 8], output_size=(3, 5))
    assert pool(features, [torch.zeros(0, 4)]).shape == (0, 4, 3, 5)
    with pytest.raises(ValueError, match="powers of two"):
        MultiScaleRoIPool(["p2", "p3"], [4, 12])
