"""Spatial transforms of video frames: a functional core and mmaction2-named dict wrappers.

The functions take frames ``[T, H, W, C]`` (uint8 or float; numpy array or torch tensor) and return the same kind
of object; the work is done by ``torchvision.transforms.v2.functional`` where it fits. The classes (``Resize``,
``RandomResizedCrop``, ``FormatShape``, ...) take a results dict, change ``imgs`` and the shape keys, and return it;
their docstrings list the keys they read and add. Boxes are ``(x1, y1, x2, y2)`` in pixels and sizes follow
mmaction2: ``crop_size`` / ``scale`` tuples are ``(w, h)``.

Detection items (:class:`lateral.data.coco.CocoDetection`) hold one ``image`` ``[3, H, W]`` and its ``boxes``;
:class:`Resize` serves them too, and :class:`RandomFlip` is their flip.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from lateral.data.sampling import data_rng
from lateral.errors import InputError

__all__ = [
    "rescale_size",
    "resize",
    "resize_short_side",
    "crop",
    "center_crop",
    "flip",
    "normalize",
    "color_jitter",
    "random_resized_crop_box",
    "multi_scale_crop_box",
    "three_crop_boxes",
    "ten_crop_boxes",
    "format_ncthw",
    "resize_image",
    "resize_boxes",
    "hflip_boxes",
    "clip_boxes",
    "Resize",
    "RandomRescale",
    "RandomCrop",
    "RandomResizedCrop",
    "MultiScaleCrop",
    "CenterCrop",
    "ThreeCrop",
    "TenCrop",
    "Flip",
    "RandomFlip",
    "ColorJitter",
    "Normalize",
    "FormatShape",
]

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    # mmcv's 'area' averages source pixels when shrinking, which antialiased bilinear approximates
    "area": InterpolationMode.BILINEAR,
    "lanczos": InterpolationMode.BICUBIC,
}


def _as_tensor(frames) -> torch.Tensor:
    if isinstance(frames, torch.Tensor):
        return frames
    if isinstance(frames, (list, tuple)):
        frames = np.stack(frames)
    frames = np.asarray(frames)
    if any(stride < 0 for stride in frames.strides):  # np.flip views; torch cannot wrap them
        frames = frames.copy()
    return torch.from_numpy(frames)


def _like(out: torch.Tensor, reference):
    return out if isinstance(reference, torch.Tensor) else out.numpy()


def _check_frames(frames) -> None:
    if frames.ndim != 4:
        raise InputError(f"expected frames [T, H, W, C], got shape {tuple(frames.shape)}")


def rescale_size(height: int, width: int, scale: float | tuple[float, float]) -> tuple[int, int]:
    """New ``(height, width)`` keeping the aspect ratio, as mmcv's ``rescale_size``.

    Args:
        height, width: current size.
        scale: a factor, or ``(long_edge, short_edge)`` bounds in either order (``inf`` for no bound): the image is
            scaled by the largest factor that keeps both edges within them.
    """
    if isinstance(scale, (int, float)):
        if scale <= 0:
            raise InputError(f"scale factor must be positive, got {scale}")
        factor = float(scale)
    else:
        max_long_edge, max_short_edge = max(scale), min(scale)
        factor = min(max_long_edge / max(height, width), max_short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize(frames, size: tuple[int, int], interpolation: str = "bilinear", antialias: bool = True):
    """Resize every frame to ``size = (height, width)``.

    Args:
        frames: ``[T, H, W, C]``.
        size: output ``(height, width)``.
        interpolation: ``'nearest'``, ``'bilinear'``, ``'bicubic'`` (mmcv's ``'area'``/``'lanczos'`` map to the
            closest of these).
        antialias: low-pass before shrinking (torchvision's default; mmcv's bilinear does not).

    Returns:
        ``[T, height, width, C]``, same dtype and kind as ``frames``.
    """
    _check_frames(frames)
    if interpolation not in _INTERPOLATION:
        raise InputError(f"unknown interpolation '{interpolation}', expected one of {', '.join(_INTERPOLATION)}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise InputError(f"cannot resize to {height}x{width}")
    tensor = _as_tensor(frames)
    if tuple(tensor.shape[1:3]) == (height, width):
        return frames
    mode = _INTERPOLATION[interpolation]
    # [T, C, H, W] view of channels-last memory: torch's fast uint8 antialiased kernels work on that layout
    out = F.resize(
        tensor.permute(0, 3, 1, 2),
        [height, width],
        interpolation=mode,
        antialias=antialias and mode != InterpolationMode.NEAREST,
    )
    return _like(out.permute(0, 2, 3, 1), frames)


def resize_short_side(frames, short_side: int, interpolation: str = "bilinear"):
    """Resize so the shorter edge is ``short_side``, keeping the aspect ratio: ``[T, H, W, C] -> [T, H', W', C]``."""
    _check_frames(frames)
    height, width = rescale_size(frames.shape[1], frames.shape[2], (float("inf"), short_side))
    return resize(frames, (height, width), interpolation)


def crop(frames, box: Sequence[int]):
    """Frames inside ``box = (x1, y1, x2, y2)``: ``[T, H, W, C] -> [T, y2 - y1, x2 - x1, C]`` (a view)."""
    _check_frames(frames)
    x1, y1, x2, y2 = (int(v) for v in box)
    height, width = frames.shape[1:3]
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise InputError(f"crop box {(x1, y1, x2, y2)} is outside frames of {height}x{width} (h x w)")
    return frames[:, y1:y2, x1:x2]


def center_crop(frames, crop_hw: tuple[int, int]):
    """The central ``crop_hw = (height, width)`` region, clipped to the frame: ``[T, H, W, C] -> [T, h, w, C]``."""
    height, width = frames.shape[1:3]
    crop_h, crop_w = min(crop_hw[0], height), min(crop_hw[1], width)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return crop(frames, (left, top, left + crop_w, top + crop_h))


def flip(frames, direction: str = "horizontal"):
    """Mirror every frame left-right (``'horizontal'``) or top-bottom (``'vertical'``)."""
    _check_frames(frames)
    if direction not in ("horizontal", "vertical"):
        raise InputError(f"flip direction must be 'horizontal' or 'vertical', got '{direction}'")
    axis = 2 if direction == "horizontal" else 1
    if isinstance(frames, torch.Tensor):
        return frames.flip(axis)
    return np.flip(frames, axis=axis)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """image: [C, H, W] float -> [C, size[0], size[1]] (bilinear, antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return torch.nn.functional.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )[0]


def resize_boxes(boxes, scale_x: float, scale_y: float):
    """boxes: [K, 4] (x1, y1, x2, y2), numpy or torch -> the same boxes in an image scaled by (scale_x, scale_y)."""
    if isinstance(boxes, torch.Tensor):
        return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
    boxes = np.asarray(boxes)
    return boxes * np.array([scale_x, scale_y, scale_x, scale_y], dtype=boxes.dtype)


def hflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """boxes: [K, 4] (x1, y1, x2, y2) -> their mirror images in an image of ``width`` pixels."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def clip_boxes(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """boxes: [K, 4] (x1, y1, x2, y2) -> clipped to [0, width] x [0, height]."""
    return torch.stack(
        [
            boxes[:, 0].clamp(0, width),
            boxes[:, 1].clamp(0, height),
            boxes[:, 2].clamp(0, width),
            boxes[:, 3].clamp(0, height),
        ],
        dim=1,
    )


def normalize(frames, mean: Sequence[float], std: Sequence[float], to_bgr: bool = False):
    """``(frames - mean) / std`` per channel, as float32.

    Both conventions work: mmaction2's 0-255 statistics (``mean=[123.675, 116.28, 103.53]``) are applied to the
    pixel values as they are; 0-1 statistics (every mean and std <= 1, e.g. SlowFast's ``0.45`` / ``0.225``) are
    applied after dividing the pixels by 255.

    Args:
        frames: ``[T, H, W, C]``.
        mean, std: one value per channel (in RGB order).
        to_bgr: reverse the channel order first.

    Returns:
        float32 ``[T, H, W, C]``.
    """
    _check_frames(frames)
    tensor = _as_tensor(frames)
    if to_bgr:
        tensor = tensor.flip(-1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32)
    if mean_t.numel() != tensor.shape[-1] or std_t.numel() != tensor.shape[-1]:
        raise InputError(
            f"mean and std need {tensor.shape[-1]} values (one per channel), got {mean_t.numel()} and {std_t.numel()}"
        )
    out = tensor.to(torch.float32)
    if float(mean_t.abs().max()) <= 1.0 and float(std_t.max()) <= 1.0:
        out = out / 255.0
    out = (out - mean_t) / std_t
    return _like(out, frames)


def color_jitter(
    frames,
    brightness: float = 1.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    hue: float = 0.0,
    order: Sequence[int] = (0, 1, 2, 3),
):
    """Adjust every frame by the same factors (1.0 / 0.0 leave the frames unchanged).

    Args:
        frames: uint8 ``[T, H, W, 3]``.
        brightness, contrast, saturation: multiplicative factors.
        hue: shift in ``[-0.5, 0.5]`` of a turn.
        order: order of the four adjustments (0 brightness, 1 contrast, 2 saturation, 3 hue).
    """
    _check_frames(frames)
    tensor = _as_tensor(frames).permute(0, 3, 1, 2)
    for op in order:
        if op == 0 and brightness != 1.0:
            tensor = F.adjust_brightness(tensor, brightness)
        elif op == 1 and contrast != 1.0:
            tensor = F.adjust_contrast(tensor, contrast)
        elif op == 2 and saturation != 1.0:
            tensor = F.adjust_saturation(tensor, saturation)
        elif op == 3 and hue != 0.0:
            tensor = F.adjust_hue(tensor, hue)
    return _like(tensor.permute(0, 2, 3, 1), frames)


def random_resized_crop_box(
    height: int,
    width: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
    rng: np.random.Generator | None = None,
) -> tuple[int, int, int, int]:
    """A random box covering ``area_range`` of the frame with an aspect ratio (w/h) in ``aspect_ratio_range``,
    as mmaction2's ``RandomResizedCrop`` draws it; the central square when no attempt fits."""
    rng = rng or data_rng()
    area = height * width
    min_ar, max_ar = aspect_ratio_range
    aspect_ratios = np.exp(rng.uniform(np.log(min_ar), np.log(max_ar), size=max_attempts))
    target_areas = rng.uniform(*area_range, size=max_attempts) * area
    crop_ws = np.round(np.sqrt(target_areas * aspect_ratios)).astype(np.int64)
    crop_hs = np.round(np.sqrt(target_areas / aspect_ratios)).astype(np.int64)
    for crop_w, crop_h in zip(crop_ws.tolist(), crop_hs.tolist()):
        if 0 < crop_h <= height and 0 < crop_w <= width:
            x1 = int(rng.integers(0, width - crop_w + 1))
            y1 = int(rng.integers(0, height - crop_h + 1))
            return x1, y1, x1 + crop_w, y1 + crop_h
    size = min(height, width)
    x1, y1 = (width - size) // 2, (height - size) // 2
    return x1, y1, x1 + size, y1 + size


def _fixed_crop_offsets(width: int, height: int, crop_w: int, crop_h: int, num_fixed_crops: int = 5):
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]
    if num_fixed_crops == 13:
        offsets += [
            (0, 2 * h_step),
            (4 * w_step, 2 * h_step),
            (2 * w_step, 4 * h_step),
            (2 * w_step, 0),
            (w_step, h_step),
            (3 * w_step, h_step),
            (w_step, 3 * h_step),
            (3 * w_step, 3 * h_step),
        ]
    return offsets


def multi_scale_crop_box(
    height: int,
    width: int,
    input_size: tuple[int, int],
    scales: Sequence[float] = (1,),
    max_wh_scale_gap: int = 1,
    random_crop: bool = False,
    num_fixed_crops: int = 5,
    rng: np.random.Generator | None = None,
) -> tuple[int, int, int, int]:
    """mmaction2's ``MultiScaleCrop`` box: width and height are each a scale of the short edge (scales at most
    ``max_wh_scale_gap`` apart), placed at random or at one of 5 (or 13) fixed positions.

    Args:
        input_size: ``(w, h)`` the crop is later resized to; crop sizes within 3 px of it snap to it.
    """
    rng = rng or data_rng()
    base_size = min(height, width)
    crop_sizes = [int(base_size * s) for s in scales]
    candidates = [
        [w, h] for i, h in enumerate(crop_sizes) for j, w in enumerate(crop_sizes) if abs(i - j) <= max_wh_scale_gap
    ]
    crop_size = list(candidates[int(rng.integers(len(candidates)))])
    for i in range(2):
        if abs(crop_size[i] - input_size[i]) < 3:
            crop_size[i] = input_size[i]
    crop_w, crop_h = min(crop_size[0], width), min(crop_size[1], height)
    if random_crop:
        x1 = int(rng.integers(0, width - crop_w + 1))
        y1 = int(rng.integers(0, height - crop_h + 1))
    else:
        offsets = _fixed_crop_offsets(width, height, crop_w, crop_h, num_fixed_crops)
        x1, y1 = offsets[int(rng.integers(len(offsets)))]
    return x1, y1, x1 + crop_w, y1 + crop_h


def three_crop_boxes(height: int, width: int, crop_w: int, crop_h: int) -> list[tuple[int, int, int, int]]:
    """Left/top, right/bottom and middle crops along the long side (mmaction2 ``ThreeCrop``); the crop must span
    the short side."""
    if crop_h == height:
        w_step = (width - crop_w) // 2
        offsets = [(0, 0), (2 * w_step, 0), (w_step, 0)]
    elif crop_w == width:
        h_step = (height - crop_h) // 2
        offsets = [(0, 0), (0, 2 * h_step), (0, h_step)]
    else:
        raise InputError(
            f"ThreeCrop needs the crop ({crop_w}x{crop_h}, w x h) to span the frame's height or width "
            f"({width}x{height}); resize the short side to the crop size first"
        )
    return [(x, y, x + crop_w, y + crop_h) for x, y in offsets]


def ten_crop_boxes(height: int, width: int, crop_w: int, crop_h: int) -> list[tuple[int, int, int, int]]:
    """The four corners and the centre (mmaction2 ``TenCrop``; each is also taken flipped)."""
    return [(x, y, x + crop_w, y + crop_h) for x, y in _fixed_crop_offsets(width, height, crop_w, crop_h)]


def format_ncthw(imgs, num_clips: int, clip_len: int):
    """``[V' * num_clips * clip_len, H, W, C] -> [V' * num_clips, C, clip_len, H, W]`` (crop-major views)."""
    tensor = _as_tensor(imgs)
    if tensor.shape[0] % (num_clips * clip_len):
        raise InputError(
            f"FormatShape: {tensor.shape[0]} frames do not split into clips of {num_clips} x {clip_len} frames"
        )
    tensor = tensor.reshape((-1, num_clips, clip_len) + tuple(tensor.shape[1:]))
    tensor = tensor.permute(0, 1, 5, 2, 3, 4)
    tensor = tensor.reshape((-1,) + tuple(tensor.shape[2:]))
    return _like(tensor, imgs)


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (int, float)):
        return int(value), int(value)
    if len(value) != 2:
        raise InputError(f"expected a size or a (w, h) pair, got {value!r}")
    return int(value[0]), int(value[1])


def _get_imgs(results: dict[str, Any], step: str):
    if "imgs" not in results:
        raise KeyError(f"{step} needs 'imgs' in the results; put a decode step (e.g. PyAVDecode) before it")
    imgs = results["imgs"]
    if isinstance(imgs, (list, tuple)):
        imgs = np.stack(imgs)
    return imgs


def _no_lazy(lazy: bool, step: str) -> None:
    if lazy:
        raise InputError(f"{step}(lazy=True) is not supported: lateral applies transforms eagerly (drop lazy and Fuse)")


def _crop_results(results: dict[str, Any], imgs, box) -> None:
    results["imgs"] = crop(imgs, box)
    results["crop_bbox"] = np.array(box, dtype=np.int64)
    results["img_shape"] = tuple(results["imgs"].shape[1:3])


# results keys that hold [K, 4] pixel boxes: mmaction2's spatio-temporal detection (gt_bboxes, proposals) and
# lateral's image detection items (boxes)
BOX_KEYS = ("gt_bboxes", "proposals", "boxes")


class Resize:
    """Resize a clip or an image to a scale, moving the boxes with the pixels (mmaction2's and mmdet's ``Resize``).

    One class for both: they compute the size alike (mmcv's ``rescale_size``) and differ only in where the pixels
    are and how ``scale_factor`` is kept, which the results dict tells apart.

    Reads ``imgs`` (a clip ``[T, H, W, C]``, mmaction2) or else ``image`` (``[C, H, W]`` float, a detection item),
    ``scale_factor``, and the boxes present under ``gt_bboxes``, ``proposals``, ``boxes`` (``[K, 4]``
    ``(x1, y1, x2, y2)`` pixels, numpy or torch). Adds/updates the pixels, those boxes, ``img_shape``, ``keep_ratio``
    and ``scale_factor``: the ``(w, h)`` factors from the original, cumulative; a float32 array for a clip (as
    mmaction2), a tuple of floats for an image (as mmdet, and what the detection engine divides predictions by).

    Args:
        scale: a factor; with ``keep_ratio``, edge bounds in either order, ``-1`` for none: ``(-1, 256)`` is short
            side 256, mmdet's ``(1333, 800)`` or ``(800, 1333)`` is short side 800 with the long side at most
            1333; without ``keep_ratio``, the exact ``(w, h)``.
        keep_ratio: keep the aspect ratio.
        interpolation: ``'bilinear'`` (default), ``'nearest'``, ``'bicubic'`` (clips; images are bilinear).
        ratio_range: ``(low, high)``: multiply ``scale`` by a random factor drawn uniformly from it (mmdet's
            ``RandomResize`` scale augmentation). Drawn from Python's ``random``, which the detection loop seeds
            every iteration so a resumed run repeats it.
        lazy: not supported (must be False).
    """

    def __init__(
        self,
        scale: float | tuple[float, float],
        keep_ratio: bool = True,
        interpolation: str = "bilinear",
        ratio_range: tuple[float, float] | None = None,
        lazy: bool = False,
    ):
        _no_lazy(lazy, "Resize")
        if isinstance(scale, (int, float)):
            if scale <= 0:
                raise InputError(f"Resize scale must be positive, got {scale}")
        else:
            pair = tuple(scale)
            if len(pair) != 2:
                raise InputError(f"Resize scale must be a number or a pair, got {pair!r}")
            if min(pair) == -1:
                # -1 means "no bound": the short edge decides
                pair = (float("inf"), max(pair))
            elif not keep_ratio and min(pair) <= 0:
                raise InputError(f"Resize(keep_ratio=False) needs a positive (w, h), got {pair!r}")
            scale = pair
        if ratio_range is not None and (len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]):
            raise InputError(f"Resize ratio_range must be (low, high) with 0 < low <= high, got {ratio_range!r}")
        self.scale = scale
        self.keep_ratio = keep_ratio
        self.interpolation = interpolation
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None

    def _target_size(self, img_h: int, img_w: int) -> tuple[int, int]:
        """(new_h, new_w) for an ``img_h`` x ``img_w`` image."""
        scale = self.scale
        if self.ratio_range is not None:
            ratio = random.uniform(*self.ratio_range)
            scale = scale * ratio if isinstance(scale, (int, float)) else (scale[0] * ratio, scale[1] * ratio)
        if self.keep_ratio or isinstance(scale, (int, float)):
            return rescale_size(img_h, img_w, scale)
        return int(scale[1]), int(scale[0])

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if "imgs" in results:
            imgs = _get_imgs(results, "Resize")
            img_h, img_w = imgs.shape[1:3]
            new_h, new_w = self._target_size(img_h, img_w)
            results["imgs"] = resize(imgs, (new_h, new_w), self.interpolation)
            factor = np.array([new_w / img_w, new_h / img_h], dtype=np.float32)
            results["scale_factor"] = np.asarray(results.get("scale_factor", np.ones(2, np.float32))) * factor
        elif "image" in results:
            img_h, img_w = results["image"].shape[-2:]
            new_h, new_w = self._target_size(img_h, img_w)
            results["image"] = resize_image(results["image"], (new_h, new_w))
            old_x, old_y = results.get("scale_factor", (1.0, 1.0))
            results["scale_factor"] = (old_x * new_w / img_w, old_y * new_h / img_h)
        else:
            raise KeyError(
                "Resize needs 'imgs' (a clip: put a decode step such as PyAVDecode before it) or 'image' "
                f"in the results (have: {sorted(results)})"
            )
        for key in BOX_KEYS:
            if results.get(key) is not None:
                results[key] = resize_boxes(results[key], new_w / img_w, new_h / img_h)
        results["img_shape"] = (new_h, new_w)
        results["keep_ratio"] = self.keep_ratio
        return results


class RandomRescale:
    """Resize the short edge to a random length in ``scale_range`` (inclusive; mmaction2 ``RandomRescale``).

    Reads ``imgs``. Adds/updates ``imgs``, ``img_shape``, ``keep_ratio``, ``scale_factor``, ``short_edge``.
    """

    def __init__(self, scale_range: tuple[int, int], interpolation: str = "bilinear"):
        if len(scale_range) != 2 or scale_range[0] > scale_range[1]:
            raise InputError(f"scale_range must be (low, high) with low <= high, got {scale_range!r}")
        self.scale_range = tuple(scale_range)
        self.interpolation = interpolation

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        short_edge = int(data_rng().integers(self.scale_range[0], self.scale_range[1] + 1))
        results = Resize((-1, short_edge), keep_ratio=True, interpolation=self.interpolation)(results)
        results["short_edge"] = short_edge
        return results


class RandomCrop:
    """A random square crop of ``size`` (clipped to the frame; mmaction2 ``RandomCrop``).

    Reads ``imgs``. Adds/updates ``imgs``, ``crop_bbox``, ``img_shape``.
    """

    def __init__(self, size: int, lazy: bool = False):
        _no_lazy(lazy, "RandomCrop")
        self.size = int(size)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "RandomCrop")
        img_h, img_w = imgs.shape[1:3]
        rng = data_rng()
        x1 = int(rng.integers(0, img_w - self.size + 1)) if img_w > self.size else 0
        y1 = int(rng.integers(0, img_h - self.size + 1)) if img_h > self.size else 0
        _crop_results(results, imgs, (x1, y1, x1 + min(self.size, img_w), y1 + min(self.size, img_h)))
        return results


class RandomResizedCrop:
    """A random crop of random area and aspect ratio, the same for every frame (mmaction2 ``RandomResizedCrop``;
    follow it with ``Resize(scale=(224, 224), keep_ratio=False)``).

    Reads ``imgs``. Adds/updates ``imgs``, ``crop_bbox``, ``img_shape``.
    """

    def __init__(
        self,
        area_range: tuple[float, float] = (0.08, 1.0),
        aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
        lazy: bool = False,
    ):
        _no_lazy(lazy, "RandomResizedCrop")
        if not 0 < area_range[0] <= area_range[1] <= 1:
            raise InputError(f"area_range must satisfy 0 < low <= high <= 1, got {area_range!r}")
        if not 0 < aspect_ratio_range[0] <= aspect_ratio_range[1]:
            raise InputError(f"aspect_ratio_range must satisfy 0 < low <= high, got {aspect_ratio_range!r}")
        min_area, max_area = area_range  # a list from a config becomes a tuple
        min_ratio, max_ratio = aspect_ratio_range
        self.area_range = (min_area, max_area)
        self.aspect_ratio_range = (min_ratio, max_ratio)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "RandomResizedCrop")
        box = random_resized_crop_box(imgs.shape[1], imgs.shape[2], self.area_range, self.aspect_ratio_range)
        _crop_results(results, imgs, box)
        return results


class MultiScaleCrop:
    """Crop with width and height drawn from scales of the short edge (mmaction2 ``MultiScaleCrop``).

    Reads ``imgs``. Adds/updates ``imgs``, ``crop_bbox``, ``img_shape``, ``scales``.

    Args:
        input_size: ``(w, h)`` or one int: the size the crop is resized to afterwards.
        scales: fractions of the short edge.
        max_wh_scale_gap: how many scale steps width and height may differ.
        random_crop: random position instead of the fixed ones.
        num_fixed_crops: 5 or 13 fixed positions.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        scales: Sequence[float] = (1,),
        max_wh_scale_gap: int = 1,
        random_crop: bool = False,
        num_fixed_crops: int = 5,
        lazy: bool = False,
    ):
        _no_lazy(lazy, "MultiScaleCrop")
        if num_fixed_crops not in (5, 13):
            raise InputError(f"num_fixed_crops must be 5 or 13, got {num_fixed_crops}")
        self.input_size = _pair(input_size)
        self.scales = tuple(scales)
        self.max_wh_scale_gap = max_wh_scale_gap
        self.random_crop = random_crop
        self.num_fixed_crops = num_fixed_crops

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "MultiScaleCrop")
        box = multi_scale_crop_box(
            imgs.shape[1],
            imgs.shape[2],
            self.input_size,
            self.scales,
            self.max_wh_scale_gap,
            self.random_crop,
            self.num_fixed_crops,
        )
        _crop_results(results, imgs, box)
        results["scales"] = self.scales
        return results


class CenterCrop:
    """The central ``crop_size`` region (mmaction2 ``CenterCrop``).

    Reads ``imgs``. Adds/updates ``imgs``, ``crop_bbox``, ``img_shape``.

    Args:
        crop_size: one int or ``(w, h)``.
    """

    def __init__(self, crop_size: int | tuple[int, int], lazy: bool = False):
        _no_lazy(lazy, "CenterCrop")
        self.crop_size = _pair(crop_size)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "CenterCrop")
        img_h, img_w = imgs.shape[1:3]
        crop_w, crop_h = min(self.crop_size[0], img_w), min(self.crop_size[1], img_h)
        left, top = (img_w - crop_w) // 2, (img_h - crop_h) // 2
        _crop_results(results, imgs, (left, top, left + crop_w, top + crop_h))
        return results


def _multi_crop(imgs, boxes, with_flip: bool):
    tensor = _as_tensor(imgs)
    views = []
    for box in boxes:
        view = crop(tensor, box)
        views.append(view)
        if with_flip:
            views.append(view.flip(2))
    return _like(torch.cat(views), imgs)


class ThreeCrop:
    """Three crops along the long side, stacked crop-major: ``[T, H, W, C] -> [3 * T, h, w, C]``
    (mmaction2 ``ThreeCrop``; the crop must span the short side, e.g. after ``Resize(scale=(-1, 256))``).

    Reads ``imgs``. Adds/updates ``imgs``, ``crop_bbox`` (``[3 * T, 4]``), ``img_shape``.
    """

    def __init__(self, crop_size: int | tuple[int, int]):
        self.crop_size = _pair(crop_size)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "ThreeCrop")
        num_frames = imgs.shape[0]
        boxes = three_crop_boxes(imgs.shape[1], imgs.shape[2], *self.crop_size)
        results["imgs"] = _multi_crop(imgs, boxes, with_flip=False)
        results["crop_bbox"] = np.repeat(np.array(boxes, dtype=np.int64), num_frames, axis=0)
        results["img_shape"] = tuple(results["imgs"].shape[1:3])
        return results


class TenCrop:
    """Four corners and the centre, each also flipped, stacked crop-major: ``[T, H, W, C] -> [10 * T, h, w, C]``
    (mmaction2 ``TenCrop``: crop 1, crop 1 flipped, crop 2, ...).

    Reads ``imgs``. Adds/updates ``imgs``, ``crop_bbox`` (``[10 * T, 4]``), ``img_shape``.
    """

    def __init__(self, crop_size: int | tuple[int, int]):
        self.crop_size = _pair(crop_size)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "TenCrop")
        num_frames = imgs.shape[0]
        boxes = ten_crop_boxes(imgs.shape[1], imgs.shape[2], *self.crop_size)
        results["imgs"] = _multi_crop(imgs, boxes, with_flip=True)
        results["crop_bbox"] = np.repeat(np.array(boxes, dtype=np.int64), 2 * num_frames, axis=0)
        results["img_shape"] = tuple(results["imgs"].shape[1:3])
        return results


class Flip:
    """Mirror all frames with probability ``flip_ratio`` (mmaction2 ``Flip``).

    Reads ``imgs``, ``label`` (with ``flip_label_map``). Adds/updates ``imgs``, ``flip``, ``flip_direction``,
    ``label``.

    Args:
        flip_ratio: probability of flipping.
        direction: ``'horizontal'`` or ``'vertical'``.
        flip_label_map: labels that change when the video is flipped (``{left_class: right_class, ...}``).
        left_kp, right_kp: keypoint pairs; accepted for config compatibility (keypoints are not handled).
    """

    def __init__(
        self,
        flip_ratio: float = 0.5,
        direction: str = "horizontal",
        flip_label_map: dict | None = None,
        left_kp: Sequence[int] | None = None,
        right_kp: Sequence[int] | None = None,
        lazy: bool = False,
    ):
        _no_lazy(lazy, "Flip")
        if direction not in ("horizontal", "vertical"):
            raise InputError(f"Flip direction must be 'horizontal' or 'vertical', got '{direction}'")
        self.flip_ratio = flip_ratio
        self.direction = direction
        self.flip_label_map = flip_label_map

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "Flip")
        do_flip = bool(data_rng().random() < self.flip_ratio)
        if do_flip:
            results["imgs"] = flip(imgs, self.direction)
            if self.flip_label_map is not None and results.get("label") in self.flip_label_map:
                results["label"] = self.flip_label_map[results["label"]]
        results["flip"] = do_flip
        results["flip_direction"] = self.direction
        return results


class RandomFlip:
    """Mirror a detection item's image left-right with probability ``flip_ratio`` (lateral's detection flip).

    Reads ``image`` ``[C, H, W]`` and ``boxes`` ``[K, 4]``; updates both and sets ``flip`` (bool). Unlike
    :class:`Flip` (clips, :func:`data_rng`), it draws from Python's ``random``, which the detection loop seeds every
    iteration so a resumed run repeats it; the detection predictor leaves it out by name.
    """

    def __init__(self, flip_ratio: float = 0.5):
        self.flip_ratio = flip_ratio

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        flip = random.random() < self.flip_ratio
        if flip:
            results["image"] = results["image"].flip(-1)
            results["boxes"] = hflip_boxes(results["boxes"], results["image"].shape[-1])
        results["flip"] = flip
        return results


def _jitter_range(value, center: float, name: str, bound: tuple[float, float]) -> tuple[float, float] | None:
    if value is None or value == 0:
        return None
    if isinstance(value, (int, float)):
        low, high = center - value, center + value
    else:
        low, high = value
    low, high = max(low, bound[0]), min(high, bound[1])
    if low > high:
        raise InputError(f"ColorJitter {name} range is empty: {value!r}")
    return low, high


class ColorJitter:
    """Random brightness, contrast, saturation and hue, the same for every frame of the video, applied in random
    order (mmaction2 1.x ``ColorJitter``).

    Reads ``imgs`` (uint8). Updates ``imgs``.

    Args:
        brightness, contrast, saturation: ``x`` draws a factor from ``[1 - x, 1 + x]``; a pair is the range.
        hue: ``x`` draws a shift from ``[-x, x]`` (at most 0.5).
    """

    def __init__(
        self,
        brightness: float | tuple = 0.5,
        contrast: float | tuple = 0.5,
        saturation: float | tuple = 0.5,
        hue: float | tuple = 0.1,
    ):
        self.brightness = _jitter_range(brightness, 1.0, "brightness", (0.0, float("inf")))
        self.contrast = _jitter_range(contrast, 1.0, "contrast", (0.0, float("inf")))
        self.saturation = _jitter_range(saturation, 1.0, "saturation", (0.0, float("inf")))
        self.hue = _jitter_range(hue, 0.0, "hue", (-0.5, 0.5))

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "ColorJitter")
        rng = data_rng()
        brightness, contrast, saturation, hue = (
            float(rng.uniform(*r)) if r else neutral
            for r, neutral in ((self.brightness, 1.0), (self.contrast, 1.0), (self.saturation, 1.0), (self.hue, 0.0))
        )
        order = rng.permutation(4).tolist()
        results["imgs"] = color_jitter(imgs, brightness, contrast, saturation, hue, order=order)
        return results


class Normalize:
    """Per-channel ``(imgs - mean) / std`` to float32 (mmaction2 ``Normalize``); 0-255 statistics and 0-1
    statistics (all values <= 1, such as ``0.45`` / ``0.225``) both work, see :func:`normalize`.

    Reads ``imgs``. Adds/updates ``imgs`` (float32), ``img_norm_cfg``.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], to_bgr: bool = False, adjust_magnitude: bool = False
    ):
        if adjust_magnitude:
            raise InputError("Normalize(adjust_magnitude=True) is for optical flow, which lateral does not handle")
        if len(mean) != len(std):
            raise InputError(f"Normalize needs as many std as mean values, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise InputError(f"Normalize std must be positive, got {list(std)}")
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.to_bgr = to_bgr

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "Normalize")
        results["imgs"] = normalize(imgs, self.mean, self.std, self.to_bgr)
        results["img_norm_cfg"] = dict(
            mean=np.array(self.mean, np.float32), std=np.array(self.std, np.float32), to_bgr=self.to_bgr
        )
        return results


class FormatShape:
    """Arrange frames for the model (mmaction2 ``FormatShape``).

    ``'NCTHW'``: ``[V' * num_clips * clip_len, H, W, C] -> [V, C, T, H, W]`` with ``V = V' x num_clips`` views
    (crop-major); ``'NCHW'``: ``[N, H, W, C] -> [N, C, H, W]``.

    Reads ``imgs``, ``num_clips``, ``clip_len``. Adds/updates ``imgs``, ``input_shape``.

    Args:
        input_format: ``'NCTHW'`` or ``'NCHW'``.
        collapse: drop the leading view axis (there must be exactly one view).
    """

    def __init__(self, input_format: str, collapse: bool = False):
        if input_format not in ("NCTHW", "NCHW"):
            raise InputError(f"FormatShape input_format must be 'NCTHW' or 'NCHW', got '{input_format}'")
        self.input_format = input_format
        self.collapse = collapse

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = _get_imgs(results, "FormatShape")
        if self.input_format == "NCTHW":
            clip_len = results["clip_len"]
            if isinstance(clip_len, dict):
                clip_len = clip_len["RGB"]
            imgs = format_ncthw(imgs, int(results["num_clips"]), int(clip_len))
        else:
            imgs = _like(_as_tensor(imgs).permute(0, 3, 1, 2), imgs)
        if self.collapse:
            if imgs.shape[0] != 1:
                raise InputError(f"FormatShape(collapse=True) needs exactly one view, got {imgs.shape[0]}")
            imgs = imgs[0]
        results["imgs"] = imgs
        results["input_shape"] = tuple(imgs.shape)
        return results
