"""COCO-format detection data: an annotation json + an image folder, read defensively, with resize/flip transforms.

Bad input is repaired or skipped, never fatal unless the annotation file itself is not COCO:

* images listed but missing from the folder are skipped at load and counted (``missing_images``); images that
  fail to decode return None from ``__getitem__`` and are dropped by :func:`collate_detection`;
* boxes reaching outside the image are clipped to it, boxes with no area left are dropped, with one warning;
* category ids need not be contiguous (COCO's are 1..90 with gaps): they map to labels 1..K in id order, 0 being
  the background of torchvision's detectors.

The pipeline is built by the one :func:`lateral.data.pipeline.build_pipeline` (re-exported here): its steps
(:class:`~lateral.data.transforms.Resize`, :class:`~lateral.data.transforms.RandomFlip`) read and update an item's
``image`` and ``boxes``, with the box functions of :mod:`lateral.data.transforms`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

# the transforms and the pipeline builder detection configs name; imported here so `from lateral.data.coco import
# build_pipeline, Resize, ...` keeps working
from lateral.data.pipeline import build_pipeline
from lateral.data.transforms import RandomFlip, Resize, clip_boxes, hflip_boxes, resize_boxes, resize_image
from lateral.errors import InputError

__all__ = [
    "CocoFormatError",
    "read_coco_annotations",
    "CocoDetection",
    "collate_detection",
    "load_image",
    "resize_image",
    "resize_boxes",
    "hflip_boxes",
    "clip_boxes",
    "Resize",
    "RandomFlip",
    "build_pipeline",
]


class CocoFormatError(InputError):
    """An annotation file that is not COCO detection json; the message says what is missing or malformed."""


def load_image(path: str | os.PathLike) -> torch.Tensor | None:
    """Read an image file as [3, H, W] float RGB in [0, 1]; None if it is missing or cannot be decoded."""
    try:
        with Image.open(path) as pil:
            pil.load()
            return pil_to_tensor(pil.convert("RGB")).float() / 255.0
    except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- annotations


def read_coco_annotations(ann_file: str | os.PathLike) -> dict[str, Any]:
    """Read and check a COCO detection annotation file.

    Returns:
        The parsed dict, with ``images``, ``annotations`` and ``categories`` lists.

    Raises:
        FileNotFoundError: no such file.
        CocoFormatError: not json, or not COCO detection json (the message says which part is wrong).
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CocoFormatError(f"{ann_file} is not a COCO annotation file: not valid JSON ({err})") from None
    expected = "a JSON object with 'images', 'annotations' and 'categories' lists"
    if not isinstance(data, dict):
        raise CocoFormatError(
            f"{ann_file} is not a COCO annotation file: expected {expected}, got a {type(data).__name__}"
        )
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise CocoFormatError(
            f"{ann_file} is not a COCO annotation file: {', '.join(repr(k) for k in missing)} missing or not a list "
            f"(expected {expected}; top-level keys found: {sorted(data)[:10]})"
        )
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise CocoFormatError(f"{ann_file}: images[{i}] needs 'id' and 'file_name', got {str(image)[:100]}")
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or "id" not in category:
            raise CocoFormatError(f"{ann_file}: categories[{i}] needs an 'id', got {str(category)[:100]}")
    for i, ann in enumerate(data["annotations"]):
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise CocoFormatError(f"{ann_file}: annotations[{i}] needs 'image_id', 'category_id' and 'bbox'")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise CocoFormatError(f"{ann_file}: annotations[{i}] 'bbox' must be [x, y, width, height], got {bbox!r}")
    return data


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection dataset.

    Each item is a dict: ``image`` [3, H, W] float in [0, 1] (after the pipeline), ``boxes`` [K, 4] float
    (x1, y1, x2, y2, pixels of the transformed image), ``labels`` [K] int64 in 1..num_classes, ``image_id`` (COCO
    id), ``scale_factor`` (x, y) from the original image to the returned one, ``orig_size`` (H, W). An image that
    cannot be decoded gives None (see :func:`collate_detection`).

    Args:
        ann_file: COCO json.
        img_dir: folder the images' ``file_name`` entries are relative to.
        pipeline: transforms applied in order (see :func:`build_pipeline`).
        skip_crowd: leave ``iscrowd=1`` boxes out of the targets (they are not single objects).
        category_ids_as_labels: use each category id itself as the label (classes 1..max id, unused ids named
            ``'N/A'``), as torchvision's COCO models do, instead of contiguous labels.

    Attributes:
        cat_ids: the original category ids, sorted; label k (1-based) is ``cat_ids[k - 1]``.
        classes: category names in label order.
        missing_images: file names listed in the json but absent from ``img_dir`` (skipped).
        unreadable_images: file names that failed to decode so far (in this process).
        clipped_boxes, dropped_boxes: how many boxes were clipped to the image / dropped for having no area.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        img_dir: str | os.PathLike,
        pipeline: Iterable[Callable[[dict], dict]] | None = None,
        skip_crowd: bool = True,
        category_ids_as_labels: bool = False,
    ):
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        self.pipeline = list(pipeline or [])
        data = read_coco_annotations(ann_file)
        if not self.img_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.img_dir} (from the config's img_dir)")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in categories]
        self.classes = [str(c.get("name", c["id"])) for c in categories]
        if category_ids_as_labels:
            if not all(isinstance(c, int) and c >= 1 for c in self.cat_ids):
                raise CocoFormatError(f"{ann_file}: category ids must be positive integers to be used as labels")
            name_of = dict(zip(self.cat_ids, self.classes))
            self.cat_ids = list(range(1, max(self.cat_ids, default=0) + 1))
            self.classes = [name_of.get(i, "N/A") for i in self.cat_ids]
        self.label_of_cat = {cat_id: label for label, cat_id in enumerate(self.cat_ids, start=1)}

        self.missing_images: list[str] = []
        self.unreadable_images: list[str] = []
        self.images: list[dict] = []
        for image in data["images"]:
            if (self.img_dir / image["file_name"]).is_file():
                self.images.append(image)
            else:
                self.missing_images.append(image["file_name"])
        if self.missing_images:
            warnings.warn(
                f"{self.ann_file}: {len(self.missing_images)} of {len(data['images'])} images are missing from "
                f"{self.img_dir} and are skipped (first: {self.missing_images[0]})",
                stacklevel=2,
            )
        self._collect_boxes(data, skip_crowd)

    def _collect_boxes(self, data: dict, skip_crowd: bool) -> None:
        """Clip every box to its image, drop boxes with no area left or an unknown category, group per image."""
        size_of = {img["id"]: (img.get("width"), img.get("height")) for img in self.images}
        self.boxes_of: dict[Any, list[list[float]]] = {img["id"]: [] for img in self.images}
        self.cats_of: dict[Any, list[int]] = {img["id"]: [] for img in self.images}
        self.crowd_of: dict[Any, list[int]] = {img["id"]: [] for img in self.images}
        self.clipped_boxes = self.dropped_boxes = 0
        unknown_categories = set()
        for ann in data["annotations"]:
            image_id = ann["image_id"]
            if image_id not in size_of:
                continue  # image missing (or not listed): nothing to attach the box to
            if ann["category_id"] not in self.label_of_cat:
                unknown_categories.add(ann["category_id"])
                continue
            crowd = int(ann.get("iscrowd", 0))
            if crowd and skip_crowd:
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1, x2, y2 = x, y, x + w, y + h
            width, height = size_of[image_id]
            if width is not None and height is not None:
                clipped = (
                    max(0.0, min(x1, width)),
                    max(0.0, min(y1, height)),
                    max(0.0, min(x2, width)),
                    max(0.0, min(y2, height)),
                )
                if clipped != (x1, y1, x2, y2):
                    self.clipped_boxes += 1
                x1, y1, x2, y2 = clipped
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                self.dropped_boxes += 1
                continue
            self.boxes_of[image_id].append([x1, y1, x2, y2])
            self.cats_of[image_id].append(ann["category_id"])
            self.crowd_of[image_id].append(crowd)
        if self.clipped_boxes or self.dropped_boxes:
            warnings.warn(
                f"{self.ann_file}: {self.clipped_boxes} boxes reached outside their image and were clipped; "
                f"{self.dropped_boxes} boxes had zero area (after clipping) and were dropped",
                stacklevel=3,
            )
        if unknown_categories:
            warnings.warn(
                f"{self.ann_file}: annotations use category ids {sorted(unknown_categories)[:10]} that are not in "
                f"'categories'; those boxes are ignored",
                stacklevel=3,
            )

    @property
    def num_classes(self) -> int:
        """Object classes + 1 (background), the ``num_classes`` of a torchvision detector."""
        return len(self.cat_ids) + 1

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_failures(self) -> int:
        """Images that failed to decode so far, in this process (DataLoader workers keep their own count)."""
        return len(self.unreadable_images)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        info = self.images[index]
        image = load_image(self.img_dir / info["file_name"])
        if image is None:
            self.unreadable_images.append(info["file_name"])
            return None
        boxes = torch.tensor(self.boxes_of[info["id"]], dtype=torch.float32).reshape(-1, 4)
        # width/height in the json may disagree with the file; the file wins
        boxes = clip_boxes(boxes, image.shape[-1], image.shape[-2])
        labels = torch.tensor([self.label_of_cat[c] for c in self.cats_of[info["id"]]], dtype=torch.int64)
        results = {
            "image": image,
            "boxes": boxes,
            "labels": labels,
            "image_id": info["id"],
            "file_name": info["file_name"],
            "orig_size": tuple(image.shape[-2:]),
            "scale_factor": (1.0, 1.0),
        }
        for transform in self.pipeline:
            results = transform(results)
        keep = (results["boxes"][:, 2] > results["boxes"][:, 0]) & (results["boxes"][:, 3] > results["boxes"][:, 1])
        results["boxes"], results["labels"] = results["boxes"][keep], results["labels"][keep]
        return results

    def coco_ground_truth(self) -> dict[str, Any]:
        """The cleaned annotations (present images only, clipped boxes, original ids) as a COCO dict for
        pycocotools."""
        annotations: list[dict[str, Any]] = []
        for info in self.images:
            for (x1, y1, x2, y2), cat_id, crowd in zip(
                self.boxes_of[info["id"]], self.cats_of[info["id"]], self.crowd_of[info["id"]]
            ):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": info["id"],
                        "category_id": cat_id,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": crowd,
                    }
                )
        used = {cat_id for cats in self.cats_of.values() for cat_id in cats}
        categories = [{"id": c, "name": n} for c, n in zip(self.cat_ids, self.classes) if n != "N/A" or c in used]
        return {"images": list(self.images), "annotations": annotations, "categories": categories}


def collate_detection(batch: list[dict | None]) -> tuple[list[dict], int]:
    """Collate dataset items into a list, dropping the None of unreadable images.

    Returns:
        (items, number of unreadable images dropped from this batch)
    """
    items = [item for item in batch if item is not None]
    return items, len(batch) - len(items)
