"""Detection: the detection task of the training loop, COCO evaluation (pycocotools) and prediction.

A detection config uses the mmengine / mmdet 3.x names::

    model = dict(type='FasterRCNN', backbone=dict(type='ResNetFPN', depth=50), num_classes=4, ...)
    train_dataloader = dict(
        batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(type='CocoDataset', data_root='data/shapes/train', ann_file='annotations.json',
                     data_prefix=dict(img='images'), pipeline=[dict(type='Resize', ...), dict(type='RandomFlip')],
                     synthetic=dict(num_images=..., image_size=..., seed=...)))  # optional: render shapes there
    val_dataloader = dict(batch_size=4, dataset=dict(...))
    val_evaluator = dict(type='CocoMetric', metric='bbox')
    optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
                         clip_grad=dict(max_norm=10.0))
    param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
                       dict(type='MultiStepLR', by_epoch=False, milestones=[450], gamma=0.1)]
    train_cfg = dict(type='IterBasedTrainLoop', max_iters=600, val_interval=600)
    default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=200, by_epoch=False, max_keep_ckpts=3))
    randomness = dict(seed=0)
    work_dir = 'work_dirs/name'

Training runs in :class:`~lateral.engine.loop.TrainingLoop` (the loop recognition uses): ``iter_N.pth`` and
``latest.pth`` checkpoints whose ``meta`` also holds the classes and original category ids (so ``predict`` needs no
dataset), ``--resume auto`` from the newest intact one, a NaN stop with a rescue checkpoint, ``log.jsonl``.
:class:`DetectionTask` supplies the COCO data, the detector, its losses and COCO AP.

Under ``torchrun`` (``WORLD_SIZE`` > 1) training is data-parallel (DDP; gloo on CPU, NCCL on GPU): every iteration
takes ``world_size * batch_size`` images, ``batch_size`` per rank, and rank 0 alone logs and writes checkpoints.
Evaluation splits the images over the ranks and gathers the detections, so each image is scored once.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lateral.checkpoint import load_checkpoint, read_checkpoint
from lateral.config import ConfigError, check_keys, positive_int_setting
from lateral.data.coco import CocoDetection, build_pipeline, collate_detection, load_image
from lateral.data.loader import worker_context
from lateral.data.shapes import ensure_shapes_dataset
from lateral.engine import distributed as dist_utils
from lateral.engine.loop import LOADER_KEYS, SAMPLER_KEYS, EpochSampler, TrainingLoop
from lateral.registry import build_model

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DetectionTask",
    "build_detection_dataset",
    "build_detector",
    "check_detector_config",
    "dataset_config",
    "train_detector",
    "detect_dataset",
    "coco_evaluate",
    "evaluate_detector",
    "predict_images",
    "draw_detections",
    "format_metrics",
    "METRIC_NAMES",
]

# the first six numbers of COCOeval.stats, in order
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# the objects each metric is over, and COCOeval's area range of the size ones (pixels^2, bounds included)
_OBJECTS_OF = {"AP": "", "AP50": "", "AP75": "", "APs": "small ", "APm": "medium ", "APl": "large "}
_AREA_RANGES = {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, float("inf"))}
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]

DATASET_KEYS = (
    "type",
    "data_root",
    "ann_file",
    "data_prefix",
    "pipeline",
    "synthetic",
    "skip_crowd",
    "labels_are_category_ids",
    "metainfo",
    "test_mode",
    "filter_cfg",
    "backend_args",
)
EVALUATOR_KEYS = ("type", "metric", "ann_file", "format_only", "classwise", "backend_args", "outfile_prefix")
# what lateral's first detection engine called things, and the mmengine / mmdet 3.x names that replace them
OLD_KEYS = {
    "data": "data.train / data.val / data.test -> train_dataloader / val_dataloader / test_dataloader = dict("
    "batch_size=..., num_workers=..., dataset=dict(ann_file=..., data_prefix=dict(img=<img_dir>), "
    "pipeline=..., synthetic=...)); data.batch_size and data.num_workers -> each *_dataloader's batch_size "
    "and num_workers; data.labels_are_category_ids -> dataset.labels_are_category_ids; data.classes -> "
    "dataset.metainfo=dict(classes=...); data.test_pipeline -> test_pipeline",
    "optimizer": "optimizer=dict(lr, momentum, weight_decay, grad_clip) -> optim_wrapper=dict(optimizer=dict("
    "type='SGD', lr=..., momentum=..., weight_decay=...), clip_grad=dict(max_norm=<grad_clip>))",
    "schedule": "schedule.max_iters -> train_cfg=dict(type='IterBasedTrainLoop', max_iters=..., val_interval=...); "
    "schedule.warmup_iters -> param_scheduler entry dict(type='LinearLR', start_factor=0.1, "
    "by_epoch=False, begin=0, end=<warmup_iters>); schedule.milestones and gamma -> dict(type="
    "'MultiStepLR', by_epoch=False, milestones=[...], gamma=...); schedule.log_interval -> "
    "default_hooks.logger.interval; schedule.checkpoint_interval -> default_hooks.checkpoint=dict("
    "interval=..., by_epoch=False)",
    "seed": "seed -> randomness=dict(seed=...)",
}


# --------------------------------------------------------------------------------------------------- building


def dataset_config(cfg: dict, split: str) -> dict:
    """The ``dataset`` dict of the config's ``<split>_dataloader`` (``split``: train, val or test)."""
    loader_cfg = cfg.get(f"{split}_dataloader")
    if not loader_cfg:
        raise ConfigError(f"the config has no {split}_dataloader (a {split} split) to use")
    check_keys(loader_cfg, LOADER_KEYS, f"{split}_dataloader")
    if "dataset" not in loader_cfg:
        raise ConfigError(f"{split}_dataloader needs a 'dataset' entry")
    return loader_cfg["dataset"]


def _dataset_paths(dataset_cfg: dict) -> tuple[Path, Path]:
    """(annotation file, image folder) of a dataset dict: ``ann_file`` and ``data_prefix.img``, both under
    ``data_root`` when it is given (as in mmdet)."""
    for key in ("ann_file", "data_prefix"):
        if key not in dataset_cfg:
            raise ConfigError(f"a detection dataset needs '{key}', got keys {sorted(dataset_cfg)}")
    prefix = check_keys(dataset_cfg["data_prefix"], ("img",), "dataset.data_prefix")
    if "img" not in prefix:
        raise ConfigError(
            "dataset.data_prefix needs 'img': the folder of the images, e.g. data_prefix=dict(img='images')"
        )
    root = str(dataset_cfg.get("data_root") or "")
    return Path(os.path.join(root, dataset_cfg["ann_file"])), Path(os.path.join(root, prefix["img"]))


def build_detection_dataset(dataset_cfg: dict) -> CocoDetection:
    """A :class:`CocoDetection` from a ``*_dataloader.dataset`` dict; with ``synthetic=dict(...)`` the shapes
    dataset is rendered into the ``ann_file``'s folder first (skipped when it is already there).
    ``labels_are_category_ids``: the label is the COCO category id (torchvision's COCO checkpoints)."""
    check_keys(dataset_cfg, DATASET_KEYS, "dataset")
    if dataset_cfg.get("type", "CocoDataset") != "CocoDataset":
        raise ConfigError(
            f"a detection dataset is type='CocoDataset' (COCO json + image folder), got {dataset_cfg['type']!r}"
        )
    ann_file, img_dir = _dataset_paths(dataset_cfg)
    synthetic = dataset_cfg.get("synthetic")
    if synthetic is not None:
        if ann_file.name != "annotations.json" or img_dir != ann_file.parent / "images":
            raise ConfigError(
                "a synthetic dataset writes DIR/annotations.json and DIR/images: set ann_file and "
                "data_prefix.img to those"
            )
        # under torchrun rank 0 renders while the other ranks wait, then they find its files
        if not dist_utils.is_main_process():
            dist_utils.barrier()
        ensure_shapes_dataset(ann_file.parent, **synthetic)
        if dist_utils.is_main_process():
            dist_utils.barrier()
    pipeline = build_pipeline(dataset_cfg.get("pipeline"))
    return CocoDetection(
        ann_file,
        img_dir,
        pipeline,
        dataset_cfg.get("skip_crowd", True),
        bool(dataset_cfg.get("labels_are_category_ids")),
    )


def check_detector_config(cfg: dict) -> None:
    """Refuse a config of the old detection keys (with what to rename), and one whose ``model`` is not a detector
    (a recognition config given to a detect command)."""
    old = [key for key in OLD_KEYS if key in cfg]
    if old:
        renames = "\n  ".join(OLD_KEYS[key] for key in old)
        raise ConfigError(
            f"this detection config uses the old top-level keys {', '.join(old)}; detection configs now "
            f"take the mmengine / mmdet 3.x names. Rename:\n  {renames}\n(see "
            "configs/detection/faster_rcnn_r50_fpn_shapes.py and docs/detection.md)"
        )
    if "model" not in cfg:
        raise ConfigError("the config defines no 'model'")
    if not isinstance(cfg["model"], dict):
        raise ConfigError(f"model must be a dict, got {type(cfg['model']).__name__}")
    model_type = cfg["model"].get("type")
    if model_type != "FasterRCNN":
        raise ConfigError(
            f"the config's model is a {model_type}, not a detector: the detect commands take a "
            "FasterRCNN config (e.g. configs/detection/faster_rcnn_r18_fpn_shapes.py); recognizers run "
            "with lateral train / test / predict"
        )


def build_detector(cfg: dict, num_classes: int | None = None) -> nn.Module:
    """The config's ``model``; ``num_classes`` (from a dataset) fills it in when the config leaves it out and
    must agree with it otherwise."""
    check_detector_config(cfg)
    model_cfg = dict(cfg["model"])
    if num_classes is not None:
        configured = model_cfg.setdefault("num_classes", num_classes)
        if configured != num_classes:
            raise ConfigError(
                f"model.num_classes is {configured} but the dataset has {num_classes - 1} categories "
                f"(+1 background = {num_classes}); fix model.num_classes or the annotation file"
            )
    return build_model(model_cfg)


def collate_images(batch: list[dict | None]) -> list[dict] | None:
    """A batch as a list of dataset items, the None of unreadable images left out; None when none is left."""
    items, _ = collate_detection(batch)
    return items or None


def _to_device(items: list[dict], device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    images = [item["image"].to(device) for item in items]
    targets = [{"boxes": item["boxes"].to(device), "labels": item["labels"].to(device)} for item in items]
    return images, targets


# --------------------------------------------------------------------------------------------------- training


class DetectionTask:
    """Detection for :class:`~lateral.engine.loop.TrainingLoop`: COCO-format data, a torchvision-style detector
    (whose training forward returns its losses), COCO box AP for validation.

    Args:
        cfg: the config dict.
        log: where the evaluation's lines go.
        evaluate: validate on ``val_dataloader`` (when the config has one).
    """

    best_meta_key = "best_AP"

    def __init__(self, cfg: dict, log: Callable[[str], None] = print, evaluate: bool = True):
        self.cfg = cfg
        self.log = log
        self.evaluate = evaluate
        self.meta: dict = {}
        self._images: list[torch.Tensor] = []  # the last step's images, to try a rescued model on

    def check_config(self) -> None:
        check_detector_config(self.cfg)
        for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
            check_keys(self.cfg.get(key), LOADER_KEYS, key)
        evaluator = check_keys(self.cfg.get("val_evaluator"), EVALUATOR_KEYS, "val_evaluator")
        if evaluator.get("type", "CocoMetric") != "CocoMetric" or evaluator.get("metric", "bbox") not in (
            "bbox",
            ["bbox"],
        ):
            raise ConfigError(
                f"val_evaluator: lateral computes dict(type='CocoMetric', metric='bbox'), got {evaluator}"
            )

    def build_loader(self, split: str, seed: int, distributed: bool, resumable: bool = False):
        key = f"{split}_dataloader"
        if split != "train" and not (self.evaluate and self.cfg.get(key)):
            return None
        loader_cfg = self.cfg[key]
        dataset = build_detection_dataset(dataset_config(self.cfg, split))
        batch_size = positive_int_setting(loader_cfg.get("batch_size", 2), f"{key}.batch_size")
        sampler: torch.utils.data.Sampler | None = None
        if split == "train":
            world_size = dist_utils.world_size()
            if len(dataset) < batch_size * world_size:
                raise ConfigError(
                    f"the training set has {len(dataset)} readable images, fewer than "
                    f"batch_size={batch_size} x {world_size} process(es)"
                )
            sampler_cfg = check_keys(loader_cfg.get("sampler"), SAMPLER_KEYS, f"{key}.sampler")
            sampler = EpochSampler(len(dataset), sampler_cfg.get("shuffle", True), seed, dist_utils.rank(), world_size)
        num_workers = int(loader_cfg.get("num_workers", 0))
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_images,
            num_workers=num_workers,
            multiprocessing_context=worker_context() if num_workers else None,
        )

    def build_model(self, train_loader, val_loader) -> nn.Module:
        dataset = train_loader.dataset
        self.meta = {"classes": list(dataset.classes), "cat_ids": list(dataset.cat_ids)}
        return build_detector(self.cfg, dataset.num_classes)

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device)

    def losses(
        self, model: nn.Module, forward: Callable, batch: list[dict], device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, torch.Tensor]:
        images, targets = _to_device(batch, device)
        self._images = images
        with autocast():
            return forward(images, targets)

    def predicts_finite(self, model: nn.Module, device: torch.device, autocast: Callable[[], Any]) -> bool:
        with autocast():
            outputs = model(self._images)
        return all(bool(torch.isfinite(out["boxes"]).all() and torch.isfinite(out["scores"]).all()) for out in outputs)

    def validate(
        self, model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None, progress: bool
    ) -> dict:
        return evaluate_detector(model, loader.dataset, batch_size=loader.batch_size, log=self.log, device=device)

    def score(self, metrics: dict) -> float:
        return -1.0 if metrics.get("AP") is None else float(metrics["AP"])

    def describe_validation(self, record: dict) -> list[str]:
        shown = [
            f"{name} {record[f'val_{name}']:.3f}" for name in ("AP", "AP50") if record.get(f"val_{name}") is not None
        ]
        return [f"val {' '.join(shown)}"] if shown else []

    def after_train_epoch(self, loop: TrainingLoop) -> None:
        pass

    def checkpoint_meta(self) -> dict:
        return self.meta


def train_detector(
    cfg: dict,
    work_dir: str | Path | None = None,
    resume: str | None = None,
    log: Callable[[str], None] = print,
    evaluate: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train the config's detector, checkpointing to ``work_dir``; validate on ``val_dataloader``.

    Args:
        cfg: the loaded config dict.
        work_dir: where checkpoints go (default ``cfg['work_dir']``).
        resume: ``'auto'`` (the newest intact checkpoint in ``work_dir``, if any), a checkpoint path, or None.
        log: where progress lines go (rank 0 only under ``torchrun``).
        evaluate: validate every ``train_cfg.val_interval`` and at the end when the config has a val_dataloader.
        device: 'cpu', 'cuda', 'cuda:1', ...; default this rank's GPU if there is one, else the CPU.

    Returns:
        ``{'iterations', 'train_seconds', 'checkpoint', 'skipped_images', 'metrics', 'model'}`` (the trained
        detector, on ``device``, in eval mode; ``metrics``: the last validation's, or None).
    """
    check_detector_config(cfg)  # before any data is read or written
    work_dir = Path(work_dir or cfg.get("work_dir") or "work_dirs/detection")

    def say(line: str) -> None:
        if dist_utils.is_main_process():
            log(line)

    task = DetectionTask(cfg, say, evaluate)
    loop = TrainingLoop(task, work_dir, resume=resume, device=device, progress=False, say=say)
    try:
        dataset = loop.train_loader.dataset
        processes = f" on {dist_utils.world_size()} processes" if loop.distributed else ""
        length = f"{loop.settings.length} {'epochs' if loop.settings.by_epoch else 'iterations'}"
        say(
            f"training {type(loop.model).__name__} on {len(dataset)} images for {length}{processes} "
            f"({loop.device.type}) -> {work_dir}"
        )
        if loop.iteration:
            say(f"resumed at iteration {loop.iteration} (epoch {loop.start_epoch})")
        started, first = time.perf_counter(), loop.iteration
        loop.run()
        seconds = time.perf_counter() - started
        skipped = sum(record.get("failed_samples", 0) for record in loop.history) + len(dataset.missing_images)
    finally:
        loop.close()
    dist_utils.broadcast_buffers(loop.model)  # every rank now holds the checkpoint's BN statistics (rank 0's)
    if skipped:
        say(f"skipped {skipped} unreadable or missing training images")
    checkpoint = work_dir / "latest.pth"
    say(f"trained {loop.iteration - first} iterations in {seconds:.1f} s; checkpoint {checkpoint}")
    metrics = loop.last_val or None
    if metrics and dist_utils.is_main_process():
        (work_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return {
        "iterations": loop.iteration,
        "train_seconds": seconds,
        "checkpoint": str(checkpoint),
        "skipped_images": skipped,
        "metrics": metrics,
        "model": loop.model.eval(),
    }


# ------------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def detect_dataset(
    model: nn.Module,
    dataset: CocoDetection,
    batch_size: int = 2,
    log: Callable[[str], None] = print,
    cat_ids: list[int] | None = None,
    device: str | torch.device | None = None,
) -> tuple[list[dict], list[Any]]:
    """Run the detector over a dataset (under ``torchrun``, over this rank's share of it).

    Args:
        model: a torchvision-style detector; it is moved to ``device``.
        dataset: the images and their ground truth.
        batch_size: images per forward pass.
        log: where the count of skipped images goes.
        cat_ids: category id of each model label (label k -> ``cat_ids[k - 1]``); default the dataset's own
            mapping. torchvision's COCO models predict the category id itself: pass ``[1, ..., 90]``.
        device: where to run (default: the model's device).

    Returns:
        (COCO result dicts ``{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}`` in original-image pixels,
        ids of the images that were read; unreadable ones are skipped and reported through ``log``). With a process
        group these cover this rank's contiguous share of the images only; :func:`evaluate_detector` gathers them.
    """
    cat_ids = list(dataset.cat_ids) if cat_ids is None else list(cat_ids)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    sampler = dist_utils.InferenceSampler(len(dataset)) if dist_utils.is_distributed() else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_detection)
    detections, image_ids, skipped = [], [], 0
    for items, dropped in loader:
        skipped += dropped
        if not items:
            continue
        outputs = model([item["image"].to(device) for item in items])
        for item, output in zip(items, outputs):
            image_ids.append(item["image_id"])
            scale_x, scale_y = item["scale_factor"]
            boxes = output["boxes"].cpu() / torch.tensor([scale_x, scale_y, scale_x, scale_y])
            for box, label, score in zip(boxes.tolist(), output["labels"].tolist(), output["scores"].tolist()):
                detections.append(
                    {
                        "image_id": item["image_id"],
                        "category_id": cat_ids[label - 1],
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "score": score,
                    }
                )
    skipped = sum(dist_utils.all_gather_objects(skipped)) + len(dataset.missing_images)
    if skipped:
        log(
            f"skipped {skipped} missing or unreadable images "
            f"(first: {(dataset.missing_images + dataset.unreadable_images)[:1]})"
        )
    return detections, image_ids


def coco_evaluate(
    ground_truth: dict, detections: list[dict], image_ids: list[Any] | None = None
) -> dict[str, float | None]:
    """COCO box AP with pycocotools.

    Args:
        ground_truth: a COCO dict (``images``, ``annotations``, ``categories``).
        detections: result dicts ``{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}``.
        image_ids: restrict to these images (e.g. the ones that could be read); default all.

    Returns:
        ``{'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'}``; None where the ground truth has no objects to measure it
        on (e.g. ``APl`` without large objects; COCOeval's -1), which JSON writes as null.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict = copy.deepcopy(ground_truth)
    for ann in gt_dict["annotations"]:
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
    if not detections:  # pycocotools cannot load an empty result list: 0 where there is something to find
        wanted = None if image_ids is None else set(image_ids)
        areas = [
            ann["area"]
            for ann in gt_dict["annotations"]
            if not ann["iscrowd"] and (wanted is None or ann["image_id"] in wanted)
        ]
        ranges = {name: _AREA_RANGES.get(name, (0, float("inf"))) for name in METRIC_NAMES}
        return {
            name: 0.0 if any(low <= area <= high for area in areas) else None for name, (low, high) in ranges.items()
        }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress unconditionally
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        results = gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(gt, results, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: None if value < 0 else float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}


def format_metrics(metrics: dict[str, float | None]) -> str:
    """One line of COCO metrics; a metric without ground truth objects reads e.g.
    ``APl n/a (no large objects in the ground truth)`` rather than COCOeval's -1."""
    return "  ".join(
        f"{name} {value:.3f}"
        if value is not None
        else f"{name} n/a (no {_OBJECTS_OF.get(name, '')}objects in the ground truth)"
        for name, value in metrics.items()
    )


def evaluate_detector(
    model: nn.Module,
    dataset: CocoDetection,
    batch_size: int = 2,
    log: Callable[[str], None] = print,
    cat_ids: list[int] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float | None]:
    """Detect over ``dataset`` and print and return its COCO metrics (``cat_ids`` as in :func:`detect_dataset`).

    Under ``torchrun`` every rank detects on its share; the detections are gathered and every rank returns the
    metrics of the whole dataset.
    """
    start = time.perf_counter()
    detections, image_ids = detect_dataset(model, dataset, batch_size, log, cat_ids, device)
    if dist_utils.is_distributed():
        shares = dist_utils.all_gather_objects((detections, image_ids))
        detections = [d for share, _ in shares for d in share]
        image_ids = [i for _, share in shares for i in share]
    metrics = coco_evaluate(dataset.coco_ground_truth(), detections, image_ids)
    seconds = time.perf_counter() - start
    log(f"evaluated {len(image_ids)} images in {seconds:.1f} s")
    log(format_metrics(metrics))
    return metrics


# ------------------------------------------------------------------------------------------------- prediction


def draw_detections(
    image: torch.Tensor, boxes: torch.Tensor, labels: list[str], scores: torch.Tensor, class_ids: list[int]
) -> Image.Image:
    """image: [3, H, W] in [0, 1]; boxes: [K, 4] (x1, y1, x2, y2) -> a PIL image with boxes and captions.

    A caption sits on the box's top edge, above it; where there is no room above (a box at the top of the image)
    it goes inside the box, under the edge, and it moves left rather than run off the right edge.
    """
    from PIL import Image, ImageDraw

    canvas = Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(canvas)
    for box, label, score, class_id in zip(boxes.tolist(), labels, scores.tolist(), class_ids):
        color = _PALETTE[class_id % len(_PALETTE)]
        draw.rectangle(box, outline=color, width=2)
        caption = f"{label} {score:.2f}"
        # the ink's offsets from the text origin: the glyphs are placed by them, not by the origin, so that the
        # caption fills its rectangle whatever the font's ascent
        left, top, right, bottom = draw.textbbox((0, 0), caption)
        label_w, label_h = right - left + 2, bottom - top + 2
        x = max(0.0, min(box[0], canvas.width - 1 - label_w))
        y = box[1] - label_h if box[1] - label_h >= 0 else box[1]
        y = max(0.0, min(y, canvas.height - 1 - label_h))
        draw.rectangle([x, y, x + label_w, y + label_h], fill=color)
        draw.text((x + 1 - left, y + 1 - top), caption, fill=(255, 255, 255))
    return canvas


@torch.no_grad()
def predict_images(
    model: nn.Module,
    image_paths: list[str | Path],
    out_dir: str | Path,
    pipeline: Iterable[Callable[[dict], dict]],
    classes: list[str],
    cat_ids: list[int] | None = None,
    score_thr: float = 0.5,
    device: str | torch.device | None = None,
) -> list[Path]:
    """Detect objects in image files; write ``<stem>.json`` (boxes in original pixels) and ``<stem>.png``.

    Returns:
        The paths of the written files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    written = []
    for path in image_paths:
        path = Path(path)
        image = load_image(path)
        if image is None:
            raise FileNotFoundError(f"cannot read image {path} (missing, or not an image file)")
        results: dict[str, Any] = {"image": image, "boxes": torch.zeros(0, 4), "scale_factor": (1.0, 1.0)}
        for transform in pipeline:
            if type(transform).__name__ != "RandomFlip":  # no test-time randomness
                results = transform(results)
        output = {key: value.cpu() for key, value in model([results["image"].to(device)])[0].items()}
        keep = output["scores"] >= score_thr
        scale_x, scale_y = results["scale_factor"]
        boxes = output["boxes"][keep] / output["boxes"].new_tensor([scale_x, scale_y, scale_x, scale_y])
        labels = output["labels"][keep].tolist()
        scores = output["scores"][keep]
        names = [classes[label - 1] if 0 < label <= len(classes) else f"class_{label}" for label in labels]
        record = {
            "image": str(path),
            "width": image.shape[-1],
            "height": image.shape[-2],
            "detections": [
                {
                    "box": [round(v, 2) for v in box],
                    "score": round(score, 4),
                    "label": label,
                    "category_id": cat_ids[label - 1] if cat_ids and 0 < label <= len(cat_ids) else label,
                    "class": name,
                }
                for box, score, label, name in zip(boxes.tolist(), scores.tolist(), labels, names)
            ],
        }
        json_path, png_path = out_dir / f"{path.stem}.json", out_dir / f"{path.stem}.png"
        json_path.write_text(json.dumps(record, indent=1))
        draw_detections(image, boxes, names, scores, labels).save(png_path)
        written += [json_path, png_path]
    return written


def load_detector(cfg: dict, checkpoint: str) -> tuple[nn.Module, dict]:
    """Build the config's detector and fill it from ``checkpoint``; the class count comes from the checkpoint."""
    obj = read_checkpoint(checkpoint)
    meta = obj.get("meta", {}) if isinstance(obj.get("meta"), dict) else {}
    num_classes = len(meta["classes"]) + 1 if "classes" in meta else None
    model = build_detector(cfg, num_classes)
    load_checkpoint(model, obj, strict=True, source=str(checkpoint))
    return model, meta
