"""Detection engine: train, evaluate (COCO AP via pycocotools) and predict with a config-built Faster R-CNN.

A detection config is a Python-dict file with these top-level names::

    model = dict(type='FasterRCNN', backbone=dict(type='ResNetFPN', depth=50), num_classes=4, ...)
    data = dict(
        train=dict(ann_file='...json', img_dir='...', pipeline=[dict(type='Resize', ...), dict(type='RandomFlip')],
                   synthetic=dict(num_images=..., image_size=..., seed=...)),   # optional: render shapes there
        val=dict(ann_file=..., img_dir=..., pipeline=[...]),
        batch_size=4, num_workers=0)
    optimizer = dict(lr=0.02, momentum=0.9, weight_decay=1e-4, grad_clip=None)  # grad_clip: max gradient norm
    schedule = dict(max_iters=600, warmup_iters=50, milestones=(450,), gamma=0.1, log_interval=20,
                    checkpoint_interval=200)
    work_dir = 'work_dirs/name'
    seed = 0

Checkpoints hold ``state_dict``, ``optimizer``, ``iteration``, the RNG states and ``meta`` (classes and original
category ids, so ``predict`` needs no dataset); they are written atomically to ``work_dir/latest.pth``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) training is data-parallel (DDP; gloo on CPU, NCCL on GPU): every iteration
takes ``world_size * batch_size`` images, ``batch_size`` per rank, and rank 0 alone logs and writes checkpoints.
Evaluation splits the images over the ranks and gathers the detections, so each image is scored once.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch import nn

from lateral.checkpoint import CheckpointError, load_checkpoint, nonfinite_tensors, read_checkpoint, save_checkpoint
from lateral.config import (
    ConfigError, apply_cfg_options, check_keys, check_top_level, load_config, positive_int_setting,
    positive_number_setting,
)
from lateral.data.coco import CocoDetection, build_pipeline, collate_detection, load_image
from lateral.data.loader import worker_context
from lateral.data.shapes import ensure_shapes_dataset
from lateral.engine import distributed as dist_utils
from lateral.registry import build_model

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "build_detection_dataset",
    "build_detector",
    "learning_rate",
    "train_detector",
    "detect_dataset",
    "coco_evaluate",
    "evaluate_detector",
    "predict_images",
    "draw_detections",
    "format_metrics",
    "add_cli",
    "METRIC_NAMES",
]

# the first six numbers of COCOeval.stats, in order
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# the objects each metric is over, and COCOeval's area range of the size ones (pixels^2, bounds included)
_OBJECTS_OF = {"AP": "", "AP50": "", "AP75": "", "APs": "small ", "APm": "medium ", "APl": "large "}
_AREA_RANGES = {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, float("inf"))}
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]


# --------------------------------------------------------------------------------------------------- building


def build_detection_dataset(split_cfg: dict, category_ids_as_labels: bool = False) -> CocoDetection:
    """A :class:`CocoDetection` from ``data.train`` / ``data.val``; with ``synthetic=dict(...)`` the shapes
    dataset is rendered into the ``ann_file``'s folder first (skipped when it is already there).
    ``category_ids_as_labels`` is the config's ``data.labels_are_category_ids`` (torchvision's COCO labels)."""
    split_cfg = dict(split_cfg)
    for key in ("ann_file", "img_dir"):
        if key not in split_cfg:
            raise ConfigError(f"a detection data split needs '{key}', got keys {sorted(split_cfg)}")
    synthetic = split_cfg.pop("synthetic", None)
    if synthetic is not None:
        ann_file = Path(split_cfg["ann_file"])
        if ann_file.name != "annotations.json" or Path(split_cfg["img_dir"]) != ann_file.parent / "images":
            raise ConfigError(
                "a synthetic split writes DIR/annotations.json and DIR/images: set ann_file and img_dir to those"
            )
        # under torchrun rank 0 renders while the other ranks wait, then they find its files
        if not dist_utils.is_main_process():
            dist_utils.barrier()
        ensure_shapes_dataset(ann_file.parent, **synthetic)
        if dist_utils.is_main_process():
            dist_utils.barrier()
    pipeline = build_pipeline(split_cfg.pop("pipeline", None))
    extra = set(split_cfg) - {"ann_file", "img_dir", "skip_crowd"}
    if extra:
        raise ConfigError(f"unknown keys in a detection data split: {sorted(extra)}")
    return CocoDetection(
        split_cfg["ann_file"], split_cfg["img_dir"], pipeline, split_cfg.get("skip_crowd", True), category_ids_as_labels
    )


DATA_KEYS = ("train", "val", "test", "batch_size", "num_workers", "labels_are_category_ids", "classes", "test_pipeline")


def data_section(cfg: dict) -> dict:
    """The config's ``data`` dict ({} if absent), its keys checked against :data:`DATA_KEYS`."""
    return check_keys(cfg.get("data"), DATA_KEYS, "data")


def check_detector_config(cfg: dict) -> None:
    """Refuse a config whose ``model`` is not a detector (a recognition config given to a detect command)."""
    if "model" not in cfg:
        raise ConfigError("the config defines no 'model'")
    if not isinstance(cfg["model"], dict):
        raise ConfigError(f"model must be a dict, got {type(cfg['model']).__name__}")
    model_type = cfg["model"].get("type")
    if model_type != "FasterRCNN":
        raise ConfigError(f"the config's model is a {model_type}, not a detector: the detect commands take a "
                          "FasterRCNN config (e.g. configs/detection/faster_rcnn_r18_fpn_shapes.py); recognizers run "
                          "with lateral train / test / predict")


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


def learning_rate(iteration: int, base_lr: float, warmup_iters: int, milestones: Iterable[int], gamma: float) -> float:
    """Linear warm-up from ``base_lr / 10`` over ``warmup_iters``, then ``gamma`` at each milestone passed."""
    lr = base_lr * gamma ** sum(iteration >= m for m in milestones)
    if iteration < warmup_iters:
        lr *= 0.1 + 0.9 * iteration / warmup_iters
    return lr


def _to_device(items: list[dict], device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    images = [item["image"].to(device) for item in items]
    targets = [{"boxes": item["boxes"].to(device), "labels": item["labels"].to(device)} for item in items]
    return images, targets


def _batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled batches of one epoch: a function of (seed, epoch) only, so a resumed run sees the same ones."""
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, num_items - batch_size + 1, batch_size)]


# --------------------------------------------------------------------------------------------------- training


def train_detector(
    cfg: dict,
    work_dir: str | Path | None = None,
    resume: str | None = None,
    log: Callable[[str], None] = print,
    evaluate: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train the config's detector on ``data.train``, checkpointing to ``work_dir``; evaluate on ``data.val``.

    Args:
        cfg: the loaded config dict.
        work_dir: where checkpoints go (default ``cfg['work_dir']``).
        resume: ``'auto'`` (``work_dir/latest.pth`` if it exists), a checkpoint path, or None.
        log: where progress lines go (rank 0 only under ``torchrun``).
        evaluate: evaluate the final model on ``data.val`` when the config has one.
        device: 'cpu', 'cuda', 'cuda:1', ...; default this rank's GPU if there is one, else the CPU.

    Returns:
        ``{'iterations', 'train_seconds', 'checkpoint', 'skipped_images', 'metrics', 'model'}`` (the trained
        detector, on ``device``, in eval mode after the evaluation).
    """
    check_top_level(cfg)
    check_detector_config(cfg)  # before any data is read or written
    data_cfg = data_section(cfg)
    if "train" not in data_cfg:
        raise ConfigError("the config has no data.train split to train on")
    schedule = dict(max_iters=1000, warmup_iters=100, milestones=(), gamma=0.1, log_interval=20, checkpoint_interval=500)
    schedule.update(check_keys(cfg.get("schedule"), schedule, "schedule"))
    optim_cfg = dict(lr=0.02, momentum=0.9, weight_decay=1e-4, grad_clip=None)
    optim_cfg.update(check_keys(cfg.get("optimizer"), optim_cfg, "optimizer"))
    for key in ("max_iters", "log_interval", "checkpoint_interval"):
        positive_int_setting(schedule[key], f"schedule.{key}")
    positive_number_setting(optim_cfg["lr"], "optimizer.lr")
    work_dir = Path(work_dir or cfg.get("work_dir") or "work_dirs/detection")
    seed = int(cfg.get("seed", 0))
    batch_size = int(data_cfg.get("batch_size", 2))
    device = dist_utils.resolve_device(device)
    distributed = dist_utils.init_distributed(device)
    rank, world_size = dist_utils.rank(), dist_utils.world_size()
    if rank != 0:
        log = _silent

    dataset = build_detection_dataset(data_cfg["train"], bool(data_cfg.get("labels_are_category_ids")))
    if len(dataset) < batch_size * world_size:
        raise ValueError(
            f"the training set has {len(dataset)} readable images, fewer than batch_size={batch_size} x "
            f"{world_size} process(es)"
        )
    torch.manual_seed(seed)
    random.seed(seed)
    model = build_detector(cfg, dataset.num_classes).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=optim_cfg["lr"], momentum=optim_cfg["momentum"], weight_decay=optim_cfg["weight_decay"]
    )
    meta = {"classes": list(dataset.classes), "cat_ids": list(dataset.cat_ids)}

    iteration = 0
    resume_path = _resume_path(resume, work_dir)
    if resume == "auto" and resume_path is None:
        log(f"--resume auto: no checkpoint (latest.pth) in {work_dir}; starting from scratch")
    if resume_path is not None:
        try:
            checkpoint = read_checkpoint(resume_path)  # checks the archive's CRCs: a damaged file is refused
        except CheckpointError as err:
            if resume != "auto":
                raise
            raise CheckpointError(f"--resume auto: {err}. Detection training keeps only latest.pth, so there is no "
                                  "earlier checkpoint to fall back to: restore a copy of it, or start again without "
                                  "--resume") from None
        load_checkpoint(model, checkpoint, strict=True)
        if "optimizer" not in checkpoint or "iteration" not in checkpoint:
            raise CheckpointError(f"{resume_path} has no optimizer state or iteration: it cannot resume training")
        optimizer.load_state_dict(checkpoint["optimizer"])
        iteration = int(checkpoint["iteration"])
        if "torch_rng" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng"])
        if "python_rng" in checkpoint:
            random.setstate(_tuples(checkpoint["python_rng"]))
        log(f"resumed from {resume_path} at iteration {iteration}")
    if distributed:  # ranks sample differently (augmentation, RPN/RoI sampling) but start from rank 0's weights
        torch.manual_seed(seed * 1000 + rank + iteration)
        random.seed(seed * 1000 + rank + iteration)
        device_ids = [device.index] if device.type == "cuda" else None
        trained: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    else:
        trained = model

    max_iters = int(schedule["max_iters"])
    global_batch = batch_size * world_size
    iters_per_epoch = len(dataset) // global_batch
    skipped = 0
    model.train()
    start_time = time.perf_counter()
    start_iteration = iteration
    window: dict[str, float] = {}
    window_images, window_start = 0, time.perf_counter()
    checkpoint_path = work_dir / "latest.pth"
    processes = f" on {world_size} processes" if distributed else ""
    log(f"training {type(model).__name__} on {len(dataset)} images for {max_iters} iterations{processes} "
        f"({device.type}) -> {work_dir}")
    num_workers = int(data_cfg.get("num_workers", 0))
    while iteration < max_iters:
        epoch, offset = divmod(iteration, iters_per_epoch)
        # every rank draws the same global batches and takes its own slice of each
        batches = [b[rank * batch_size : (rank + 1) * batch_size]
                   for b in _batches(len(dataset), global_batch, seed, epoch)[offset:]]
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate_detection,
            num_workers=num_workers,
            multiprocessing_context=worker_context() if num_workers else None,
        )
        for items, dropped in loader:
            skipped += dropped
            for param_group in optimizer.param_groups:
                param_group["lr"] = learning_rate(
                    iteration, optim_cfg["lr"], schedule["warmup_iters"], schedule["milestones"], schedule["gamma"]
                )
            iteration += 1
            # a step needs images on every rank (DDP all-reduces the gradients of each backward)
            if dist_utils.all_ranks_true(bool(items), device):
                images, targets = _to_device(items, device)
                losses = trained(images, targets)
                loss = sum(losses.values())
                if not _finite_on_all_ranks(loss, device):
                    raise ValueError(
                        f"the loss became {loss.item()} at iteration {iteration}; lower optimizer.lr "
                        f"(now {optim_cfg['lr']}) or lengthen schedule.warmup_iters"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if optim_cfg.get("grad_clip"):
                    torch.nn.utils.clip_grad_norm_(params, optim_cfg["grad_clip"])
                optimizer.step()
                for name, value in losses.items():
                    window[name] = window.get(name, 0.0) + value.item()
                window["count"] = window.get("count", 0.0) + 1
                window_images += len(items) * world_size
            if iteration % schedule["log_interval"] == 0 or iteration == max_iters:
                elapsed = time.perf_counter() - window_start
                rate = window_images / max(elapsed, 1e-9)
                count = max(window.pop("count", 1.0), 1.0)
                parts = " ".join(f"{name.replace('loss_', '')} {value / count:.3f}" for name, value in window.items())
                eta = (max_iters - iteration) * global_batch / max(rate, 1e-9)
                log(
                    f"iter {iteration}/{max_iters} loss {sum(window.values()) / count:.3f} ({parts}) "
                    f"lr {optimizer.param_groups[0]['lr']:.4f} {rate:.1f} img/s eta {eta / 60:.1f} min"
                )
                window, window_images, window_start = {}, 0, time.perf_counter()
            if iteration % schedule["checkpoint_interval"] == 0 or iteration == max_iters:
                # an update can overflow with no loss left to show it (or a BatchNorm statistic, with norm='BN',
                # while the loss stays finite): such a state must not replace the intact latest.pth
                bad = nonfinite_tensors(model.state_dict())
                if not dist_utils.all_ranks_true(not bad, device):
                    kept = f"{checkpoint_path} is as it was" if checkpoint_path.exists() else "nothing was saved"
                    raise ValueError(
                        f"the model became non-finite by iteration {iteration} "
                        f"({', '.join(bad[:3]) or 'on another rank'}{' ...' if len(bad) > 3 else ''}); it was not "
                        f"saved and {kept}. Lower optimizer.lr (now {optim_cfg['lr']}) or lengthen "
                        "schedule.warmup_iters"
                    )
                if rank == 0:
                    _save_training_state(checkpoint_path, model, optimizer, iteration, meta, cfg)
            if iteration >= max_iters:
                break
    if iteration == start_iteration and not checkpoint_path.exists() and rank == 0:
        _save_training_state(checkpoint_path, model, optimizer, iteration, meta, cfg)
    dist_utils.barrier()
    train_seconds = time.perf_counter() - start_time
    skipped = sum(dist_utils.all_gather_objects(skipped)) + len(dataset.missing_images)
    if skipped:
        log(f"skipped {skipped} unreadable or missing training images")
    log(f"trained {iteration - start_iteration} iterations in {train_seconds:.1f} s; checkpoint {checkpoint_path}")
    result: dict[str, Any] = {
        "iterations": iteration,
        "train_seconds": train_seconds,
        "checkpoint": str(checkpoint_path),
        "skipped_images": skipped,
        "metrics": None,
        "model": model,
    }
    del trained  # the DDP wrapper holds the process group; see lateral.engine.distributed.cleanup
    dist_utils.broadcast_buffers(model)  # every rank now holds the checkpoint's BN statistics (rank 0's)
    if evaluate and "val" in data_cfg:
        val_set = build_detection_dataset(data_cfg["val"], bool(data_cfg.get("labels_are_category_ids")))
        metrics = evaluate_detector(model, val_set, batch_size=batch_size, log=log, device=device)
        if rank == 0:
            (work_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        result["metrics"] = metrics
    return result


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _finite_on_all_ranks(loss: torch.Tensor, device: torch.device) -> bool:
    """Whether the loss is finite everywhere, so that every rank stops together on a NaN, not just one."""
    return dist_utils.all_ranks_true(bool(torch.isfinite(loss.detach()).item()), device)


def _tuples(value: Any) -> Any:
    """Python's RNG state is nested tuples; a checkpoint may hand them back as lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _resume_path(resume: str | None, work_dir: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        latest = work_dir / "latest.pth"
        return latest if latest.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint not found: {path}")
    return path


def _save_training_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int, meta: dict, cfg: dict
) -> None:
    save_checkpoint(
        {
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "meta": dict(meta, config=json.loads(json.dumps(cfg))),
        },
        path,
    )


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
        log(f"skipped {skipped} missing or unreadable images (first: {(dataset.missing_images + dataset.unreadable_images)[:1]})")
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
        areas = [ann["area"] for ann in gt_dict["annotations"]
                 if not ann["iscrowd"] and (wanted is None or ann["image_id"] in wanted)]
        ranges = {name: _AREA_RANGES.get(name, (0, float("inf"))) for name in METRIC_NAMES}
        return {name: 0.0 if any(low <= area <= high for area in areas) else None for name, (low, high) in ranges.items()}
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
    return "  ".join(f"{name} {value:.3f}" if value is not None
                     else f"{name} n/a (no {_OBJECTS_OF.get(name, '')}objects in the ground truth)"
                     for name, value in metrics.items())


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
) -> "Image.Image":
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
@torch.no_grad()
def predict_images(
    model: nn.Module,
    image_paths: list[str | Path],
    out_dir: str | Path,
    pipeline: list[Callable[[dict], dict]],
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
        results = {"image": image, "boxes": torch.zeros(0, 4), "scale_factor": (1.0, 1.0)}
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
