"""A synthetic detection dataset: coloured circles, squares and triangles on noisy backgrounds.

Rendered from a fixed seed and written to disk as real COCO files (``annotations.json`` + ``images/*.png``), so
the detection engine reads it through exactly the path a user's own dataset takes. It needs no download and a
small detector learns it in minutes on a CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPE_CLASSES", "render_shapes", "ensure_shapes_dataset"]

SHAPE_CLASSES = ("circle", "square", "triangle")
_FORMAT_VERSION = 1


def _box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], color: tuple[int, ...]) -> None:
    x1, y1, x2, y2 = box
    if kind == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=color)
    elif kind == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
    else:  # an upright triangle filling its box: apex centred on the top edge
        draw.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=color)


def render_shapes(
    out_dir: str | os.PathLike,
    num_images: int = 200,
    image_size: int = 96,
    seed: int = 0,
    max_objects: int = 3,
    min_object_size: int = 12,
    max_object_size: int | None = None,
) -> Path:
    """Render the dataset into ``out_dir`` and return the path of its ``annotations.json``.

    Args:
        out_dir: folder for ``annotations.json`` and ``images/``.
        num_images: number of images.
        image_size: side of the square images in pixels.
        seed: the same seed gives the same pixels and boxes.
        max_objects: each image holds 1..max_objects shapes, overlapping each other by at most 0.3 IoU.
        min_object_size: smallest shape side in pixels.
        max_object_size: largest shape side (default half the image).

    Returns:
        Path of the written ``annotations.json``.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    max_object_size = max_object_size or image_size // 2
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(num_images):
        background = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
        pixels = background + noise_rng.normal(0.0, 12.0, size=(image_size, image_size, 3))
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        placed: list[tuple[float, float, float, float]] = []
        for _ in range(rng.randint(1, max_objects)):
            for _attempt in range(20):
                side = rng.randint(min_object_size, max_object_size)
                x1, y1 = rng.randint(0, image_size - side), rng.randint(0, image_size - side)
                box = (x1, y1, x1 + side, y1 + side)
                if all(_box_iou(box, other) < 0.3 for other in placed):
                    break
            else:
                continue
            # a colour far from the background, so every shape is visible
            while True:
                color = tuple(rng.randint(0, 255) for _ in range(3))
                if math.dist(color, background) > 120:
                    break
            category = rng.randrange(len(SHAPE_CLASSES))
            _draw_shape(draw, SHAPE_CLASSES[category], box, color)
            placed.append(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": category + 1,
                    "bbox": [box[0], box[1], side, side],
                    "area": float(side * side),
                    "iscrowd": 0,
                }
            )
        file_name = f"{index:06d}.png"
        _save_atomically(image, out_dir / "images" / file_name)
        images.append({"id": index + 1, "file_name": file_name, "width": image_size, "height": image_size})
    data = {
        "info": {
            "description": "lateral synthetic shapes",
            "version": _FORMAT_VERSION,
            "params": _params(num_images, image_size, seed, max_objects, min_object_size, max_object_size),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(SHAPE_CLASSES)],
    }
    ann_file = out_dir / "annotations.json"
    tmp = _temp_path(ann_file)
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, ann_file)  # written last and atomically: a present json means a complete dataset
    return ann_file


def _temp_path(path: Path) -> Path:
    """A per-process temporary name beside ``path``: processes rendering the same dataset at once (``torchrun``
    ranks) never read or replace each other's half-written files."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _save_atomically(image: Image.Image, path: Path) -> None:
    """Write a PNG through :func:`_temp_path`, then move it into place."""
    tmp = _temp_path(path)
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _params(num_images: int, image_size: int, seed: int, max_objects: int, min_size: int, max_size: int) -> dict:
    return {
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
        "max_objects": max_objects,
        "min_object_size": min_size,
        "max_object_size": max_size,
    }


def ensure_shapes_dataset(out_dir: str | os.PathLike, **params: Any) -> Path:
    """Return ``out_dir/annotations.json``, rendering the dataset first unless one with the same parameters is
    already there. ``params`` are those of :func:`render_shapes`."""
    ann_file = Path(out_dir) / "annotations.json"
    if ann_file.is_file():
        try:
            info = json.loads(ann_file.read_text(encoding="utf-8")).get("info", {})
        except json.JSONDecodeError:
            info = {}
        wanted: dict[str, Any]
        wanted = dict(num_images=200, image_size=96, seed=0, max_objects=3, min_object_size=12, max_object_size=None)
        wanted.update(params)
        wanted["max_object_size"] = wanted["max_object_size"] or wanted["image_size"] // 2
        stored = info.get("params", {})
        if info.get("version") == _FORMAT_VERSION and all(stored.get(k) == v for k, v in wanted.items()):
            return ann_file
    return render_shapes(out_dir, **params)
