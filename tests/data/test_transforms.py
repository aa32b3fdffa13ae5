"""Transforms: output shapes, crop positions, flips, normalisation, determinism under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lateral.data import (
    CenterCrop,
    ColorJitter,
    Flip,
    FormatShape,
    MultiScaleCrop,
    Normalize,
    RandomResizedCrop,
    Resize,
    TenCrop,
    ThreeCrop,
    build_pipeline,
    seed_data_rng,
)
from lateral.data.transforms import color_jitter, normalize, rescale_size, resize_short_side


def position_frames(num_frames: int = 2, height: int = 12, width: int = 20) -> np.ndarray:
    """Pixel (y, x) of every frame holds (x, y, t): crops can be read back as positions. ``[T, H, W, 3]``."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([np.stack([xs, ys, np.full_like(xs, t)], axis=-1) for t in range(num_frames)]).astype(np.uint8)


def test_rescale_size_follows_mmcv():
    assert rescale_size(240, 320, (float("inf"), 256)) == (256, 341)
    assert rescale_size(320, 240, (float("inf"), 256)) == (341, 256)
    assert rescale_size(100, 200, (300, 120)) == (120, 240)
    assert rescale_size(100, 200, 0.5) == (50, 100)


def test_resize_short_side_and_exact():
    frames = np.full((3, 240, 320, 3), 77, np.uint8)
    out = resize_short_side(frames, 128)
    assert isinstance(out, np.ndarray) and out.shape == (3, 128, 171, 3) and out.dtype == np.uint8
    assert np.all(out == 77)  # a flat image stays flat
    results = Resize(scale=(-1, 64))(dict(imgs=frames))
    assert results["imgs"].shape == (3, 64, 85, 3) and results["img_shape"] == (64, 85)
    results = Resize(scale=(50, 40), keep_ratio=False)(results)
    assert results["imgs"].shape == (3, 40, 50, 3)
    np.testing.assert_allclose(results["scale_factor"], [50 / 320, 40 / 240], rtol=1e-5)
    tensor_out = resize_short_side(torch.from_numpy(frames), 128)
    assert isinstance(tensor_out, torch.Tensor) and tensor_out.shape == (3, 128, 171, 3)


def test_center_crop_position():
    results = CenterCrop(crop_size=(8, 6))(dict(imgs=position_frames()))  # (w, h)
    crop = results["imgs"]
    assert crop.shape == (2, 6, 8, 3)
    assert (crop[0, 0, 0, 0], crop[0, 0, 0, 1]) == (6, 3)  # x1 = (20 - 8) // 2, y1 = (12 - 6) // 2
    assert results["crop_bbox"].tolist() == [6, 3, 14, 9]


def test_three_crop_positions_and_view_order():
    results = ThreeCrop(crop_size=12)(dict(imgs=position_frames()))
    imgs = results["imgs"]
    assert imgs.shape == (6, 12, 12, 3)
    # crop-major: frames 0-1 left, 2-3 right, 4-5 middle
    assert imgs[:, 0, 0, 0].tolist() == [0, 0, 8, 8, 4, 4]
    assert imgs[:, 0, 0, 2].tolist() == [0, 1, 0, 1, 0, 1]


def test_ten_crop_flips_every_other_view():
    imgs = TenCrop(crop_size=(8, 4))(dict(imgs=position_frames(1)))["imgs"]
    assert imgs.shape == (10, 4, 8, 3)
    # upper-left crop, then its mirror; then upper-right (x1 = 4 * ((20 - 8) // 4) = 12)
    assert imgs[0, 0, :, 0].tolist() == list(range(0, 8))
    assert imgs[1, 0, :, 0].tolist() == list(range(7, -1, -1))
    assert imgs[2, 0, 0, 0] == 12
    assert (imgs[8, 0, 0, 0], imgs[8, 0, 0, 1]) == (6, 4)  # centre: (2 * 3, 2 * 2)


def test_flip_mirrors_columns_and_maps_labels():
    frames = position_frames()
    results = Flip(flip_ratio=1.0, flip_label_map={3: 4})(dict(imgs=frames, label=3))
    assert results["flip"] and results["label"] == 4
    np.testing.assert_array_equal(results["imgs"], frames[:, :, ::-1])
    results = Flip(flip_ratio=0.0)(dict(imgs=frames, label=3))
    assert not results["flip"] and results["imgs"] is frames


def test_normalize_both_conventions():
    frames = np.full((1, 2, 2, 3), 255, np.uint8)
    mm = normalize(frames, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    np.testing.assert_allclose(
        mm[0, 0, 0], (255 - np.array([123.675, 116.28, 103.53])) / [58.395, 57.12, 57.375], rtol=1e-6
    )
    unit = Normalize(mean=[0.45] * 3, std=[0.225] * 3)(dict(imgs=frames))["imgs"]
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, (1.0 - 0.45) / 0.225, rtol=1e-6)
    bgr = normalize(np.array([[[[10, 20, 30]]]], np.uint8), [0, 0, 0], [10, 10, 10], to_bgr=True)
    assert bgr.reshape(-1).tolist() == [3.0, 2.0, 1.0]


def test_format_shape_stacks_crops_and_clips_as_views():
    # 2 clips x 3 frames, three crops -> 6 views; frame value = t, channel value = c
    frames = np.zeros((6, 8, 12, 3), np.uint8)
    frames += np.arange(6, dtype=np.uint8)[:, None, None, None]
    results = dict(imgs=frames, num_clips=2, clip_len=3)
    results = ThreeCrop(crop_size=8)(results)
    results = FormatShape(input_format="NCTHW")(results)
    imgs = results["imgs"]
    assert imgs.shape == (6, 3, 3, 8, 8) and results["input_shape"] == (6, 3, 3, 8, 8)
    assert imgs[:, 0, :, 0, 0].tolist() == [[0, 1, 2], [3, 4, 5]] * 3
    with pytest.raises(ValueError, match="do not split into clips"):
        FormatShape(input_format="NCTHW")(dict(imgs=frames[:5], num_clips=2, clip_len=3))


def test_random_crops_repeat_under_a_seed_and_stay_inside():
    frames = position_frames(1, 60, 80)
    boxes = []
    for _ in range(2):
        seed_data_rng(11)
        boxes.append([RandomResizedCrop()(dict(imgs=frames))["crop_bbox"].tolist() for _ in range(5)])
    assert boxes[0] == boxes[1] and len({tuple(b) for b in boxes[0]}) > 1
    for x1, y1, x2, y2 in boxes[0]:
        assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 60
        assert 0.08 * 4800 * 0.8 <= (x2 - x1) * (y2 - y1) <= 4800
    seed_data_rng(0)
    crop = MultiScaleCrop(input_size=40, scales=(1, 0.875, 0.75))(dict(imgs=frames))
    height, width = crop["img_shape"]
    assert height in (60, 52, 45, 40) and width in (60, 52, 45, 40)


def test_color_jitter_keeps_shape_and_changes_values():
    seed_data_rng(1)
    frames = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    out = ColorJitter()(dict(imgs=frames))["imgs"]
    assert out.shape == frames.shape and out.dtype == np.uint8 and not np.array_equal(out, frames)


def test_color_jitter_passes_each_factor_to_its_adjustment():
    frames = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    off = dict(brightness=0, contrast=0, saturation=0, hue=0)  # 0: that adjustment is skipped
    for name, factor in [("brightness", 1.5), ("contrast", 0.5), ("saturation", 0.25), ("hue", 0.2)]:
        out = ColorJitter(**{**off, name: (factor, factor)})(dict(imgs=frames))["imgs"]  # a one-point range
        np.testing.assert_array_equal(out, color_jitter(frames, **{name: factor}))


def test_full_train_pipeline_shapes_without_video():
    pipeline = build_pipeline(
        [
            dict(type="Resize", scale=(-1, 32)),
            dict(type="RandomResizedCrop"),
            dict(type="Resize", scale=(24, 24), keep_ratio=False),
            dict(type="Flip"),
            dict(type="FormatShape", input_format="NCTHW"),
            dict(type="PackActionInputs"),
        ]
    )
    out = pipeline(dict(imgs=np.zeros((8, 48, 64, 3), np.uint8), num_clips=1, clip_len=8, label=2))
    assert out["inputs"].shape == (1, 3, 8, 24, 24) and out["inputs"].dtype == torch.uint8 and out["label"] == 2


def test_lazy_is_refused():
    with pytest.raises(Exception, match="lazy=True"):
        build_pipeline([dict(type="Resize", scale=(-1, 256), lazy=True)])


def test_resize_moves_a_clips_boxes_and_proposals_with_the_pixels():
    frames = np.zeros((2, 20, 40, 3), np.uint8)
    frames[:, 2:6, 4:10] = 255  # a bright patch framed by the box
    gt_bboxes = np.array([[4.0, 2.0, 10.0, 6.0]], np.float32)
    proposals = np.array([[0.0, 0.0, 40.0, 20.0], [4.0, 2.0, 10.0, 6.0]], np.float32)
    results = Resize(scale=(-1, 40))(dict(imgs=frames, gt_bboxes=gt_bboxes, proposals=proposals))
    assert results["imgs"].shape == (2, 40, 80, 3)
    np.testing.assert_array_equal(results["gt_bboxes"], [[8.0, 4.0, 20.0, 12.0]])
    np.testing.assert_array_equal(results["proposals"], [[0.0, 0.0, 80.0, 40.0], [8.0, 4.0, 20.0, 12.0]])
    assert results["gt_bboxes"].dtype == np.float32 and results["scale_factor"].dtype == np.float32
    assert results["imgs"][:, 5:11, 9:19].min() > 200 and results["imgs"][:, 14:, 24:].max() < 50
    # a second, non-uniform resize: the factors multiply and the boxes follow both
    results = Resize(scale=(40, 10), keep_ratio=False)(results)
    np.testing.assert_allclose(results["gt_bboxes"], [[4.0, 1.0, 10.0, 3.0]])
    np.testing.assert_allclose(results["scale_factor"], [1.0, 0.5])
    assert gt_bboxes.tolist() == [[4.0, 2.0, 10.0, 6.0]]  # the input array is not changed in place


def test_resize_serves_detection_items_and_mmdet_scales():
    image = torch.zeros(3, 20, 40)
    image[:, 2:6, 4:10] = 1.0
    item = {"image": image, "boxes": torch.tensor([[4.0, 2.0, 10.0, 6.0]]), "scale_factor": (1.0, 1.0)}
    # mmdet writes (long cap, short side); lateral's detection configs wrote (short side, long cap): the same size
    for scale in [(100, 40), (40, 100)]:
        results = build_pipeline(
            [dict(type="mmdet.Resize", scale=scale, keep_ratio=True)], "test_dataloader.dataset.pipeline"
        )(dict(item))
        assert results["image"].shape == (3, 40, 80) and results["img_shape"] == (40, 80)
        assert results["scale_factor"] == (2.0, 2.0)  # a tuple, as mmdet and the detection engine keep it
        assert results["boxes"].tolist() == [[8.0, 4.0, 20.0, 12.0]]
        assert results["image"][0, 4:12, 8:20].min() > 0.5 and results["image"][0, 14:, 24:].max() < 0.5
    capped = Resize(scale=(1333, 800))({"image": torch.zeros(3, 10, 100), "boxes": torch.zeros(0, 4)})
    assert capped["image"].shape == (3, 133, 1333)  # the long side caps it before the short side reaches 800
    with pytest.raises(KeyError, match="Resize needs 'imgs'.*or 'image'"):
        Resize(scale=(-1, 8))({"boxes": torch.zeros(0, 4)})
    with pytest.raises(
        Exception,
        match=r"pipeline\[0\] \(Resize\): unknown key 'ratio_rang'. "
        r"Did you mean 'ratio_range'",
    ):
        build_pipeline([dict(type="Resize", scale=(40, 100), ratio_rang=(0.5, 1.0))])
    with pytest.raises(Exception, match=r"pipeline\[0\] \(Resize\): missing required key 'scale'"):
        build_pipeline([dict(type="Resize")])
