"""Training recognizers: the recognition task of the training loop, with mmaction2 config keys.

:class:`RecognitionTask` says what recognition adds to :class:`~lateral.engine.loop.TrainingLoop`: video data
loaders, the recognizer (label ranges checked, mixup / cutmix, ``channels_last``), one step's classification loss,
top-1 / top-5 validation and precise BatchNorm statistics. :class:`Trainer` and :func:`train` run it.

A run writes into ``work_dir``: ``epoch_N.pth`` and ``latest.pth`` after every epoch (atomically, the previous
file intact if the write fails), ``best.pth`` when validation improves, ``log.jsonl`` (one JSON object per log
line) and optionally TensorBoard events. A killed run continues with ``resume='auto'`` from the last finished
epoch, with the same optimizer, schedule, gradient scaler and random-number state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lateral.config import ConfigError, check_bool_flags, check_keys, positive_int_setting
from lateral.data import build_dataloader, build_dataset
from lateral.data.blending import build_blending
from lateral.data.datasets import check_label_range, count_labelled
from lateral.data.loader import DEFAULT_STALL_TIMEOUT, worker_start_methods
from lateral.engine import distributed as dist_utils
from lateral.engine.evaluate import collect_scores, prepare_inputs, unwrap
from lateral.engine.loop import (  # noqa: F401  (re-exported: these lived here before the loop was shared)
    HOOK_KEYS,
    LOADER_KEYS,
    RANDOMNESS_KEYS,
    SAMPLER_KEYS,
    TRAIN_CFG_KEYS,
    EpochSampler,
    NonFiniteLossError,
    NoTrainingDataError,
    TrainingLoop,
    logger,
    resolve_amp,
    seed_setting,
)
from lateral.engine.metrics import classification_metrics
from lateral.models.heads import BaseHead
from lateral.registry import build_model

__all__ = [
    "NoTrainingDataError",
    "NonFiniteLossError",
    "RecognitionTask",
    "Trainer",
    "train",
    "resolve_amp",
    "build_loader",
]


def build_loader(
    loader_cfg: dict,
    train: bool,
    seed: int,
    distributed: bool,
    name: str = "the *_dataloader config",
    resumable: bool = False,
):
    """A DataLoader from an mmaction2 ``*_dataloader`` dict (``dataset``, ``batch_size``, ``num_workers``); ``name``
    (e.g. 'test_dataloader') is what error messages call it. ``resumable`` (training by iterations): the order comes
    from an :class:`~lateral.engine.loop.EpochSampler`, which a run resumed mid-epoch continues."""
    check_keys(loader_cfg, LOADER_KEYS, name)
    if "dataset" not in loader_cfg:
        raise ConfigError(f"{name} needs a 'dataset' entry")
    dataset = build_dataset(loader_cfg["dataset"], where=f"{name}.dataset")
    if len(dataset) == 0:
        raise ConfigError(f"the dataset of {loader_cfg['dataset'].get('ann_file', 'the config')} is empty")
    sampler: torch.utils.data.Sampler | None = None
    sampler_cfg = check_keys(loader_cfg.get("sampler"), SAMPLER_KEYS, f"{name}.sampler")
    if resumable:
        sampler = EpochSampler(
            len(dataset), sampler_cfg.get("shuffle", True), seed, dist_utils.rank(), dist_utils.world_size()
        )
    elif distributed:
        if train:
            sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False)
        else:
            sampler = dist_utils.InferenceSampler(len(dataset))
    shuffle = train and sampler is None and sampler_cfg.get("shuffle", True)
    return build_dataloader(
        dataset,
        batch_size=loader_cfg.get("batch_size", 1),
        num_workers=loader_cfg.get("num_workers", 0),
        shuffle=shuffle,
        sampler=sampler,
        drop_last=False,
        seed=seed,
        **_worker_settings(loader_cfg, name),
    )


def _worker_settings(loader_cfg: dict, name: str) -> dict[str, Any]:
    """``timeout`` (seconds without a batch before the loader is called stalled; 0: no limit) and
    ``multiprocessing_context`` (how workers start) of a ``*_dataloader`` dict, checked."""
    timeout = loader_cfg.get("timeout", DEFAULT_STALL_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ConfigError(f"{name}.timeout must be a number of seconds >= 0 (0: no limit), got {timeout!r}")
    start_method = loader_cfg.get("multiprocessing_context")
    if start_method is not None and start_method not in worker_start_methods():
        raise ConfigError(
            f"{name}.multiprocessing_context must be one of {worker_start_methods()} (or None), got {start_method!r}"
        )
    return {"timeout": float(timeout), "start_method": start_method}


def precise_batchnorm(model: nn.Module, loader, device: torch.device, num_iters: int) -> None:
    """Recompute BatchNorm statistics as true averages over ``num_iters`` training batches of ``loader``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    recognizer = unwrap(model)
    momenta = [bn.momentum for bn in bns]
    before = [[b.clone() for b in bn.buffers()] for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    used = 0
    with torch.no_grad():
        for batch in loader:
            if used >= num_iters:
                break
            if batch is None:  # unreadable batches do not count towards num_iters
                continue
            inputs = prepare_inputs(batch["inputs"], recognizer, device)
            # the bare model, not DDP: no collective per batch (ranks may skip different unreadable batches)
            # and no broadcast of rank 0's statistics over each rank's own
            recognizer(inputs.flatten(0, 1))
            used += 1
    for bn, momentum, saved in zip(bns, momenta, before):
        bn.momentum = momentum
        if used == 0:  # nothing was read: keep the statistics from training rather than the reset ones
            for buffer, old in zip(bn.buffers(), saved):
                buffer.copy_(old)
    if used == 0:
        logger.warning(
            "precise_bn: not one training batch could be read on rank %d; its BatchNorm statistics "
            "stay those of training",
            dist_utils.rank(),
        )
    dist_utils.average_buffers(model)  # each rank saw its own batches: average the statistics


class RecognitionTask:
    """Recognition for :class:`~lateral.engine.loop.TrainingLoop`.

    Config keys read here (mmaction2 1.x names): ``model``, ``train_dataloader``, ``val_dataloader``, and
    lateral's own ``precise_bn`` (``dict(num_iters=...)``) and ``channels_last`` (bool: model and training clips in
    ``channels_last_3d``, which oneDNN runs faster, above all with bf16 autocast: see benchmarks/README.md).
    """

    best_meta_key = "best_top1"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.blending = None
        self.channels_last = False
        self._clips: torch.Tensor | None = None  # the last step's clips, to try a rescued model on

    def check_config(self) -> None:
        precise = check_keys(self.cfg.get("precise_bn"), ("num_iters",), "precise_bn")
        if precise:
            positive_int_setting(precise.get("num_iters", 200), "precise_bn.num_iters")
        check_bool_flags(self.cfg, ("channels_last",))
        for key in ("train_dataloader", "val_dataloader", "test_dataloader"):  # a typo in any stops the run now
            check_keys(self.cfg.get(key), LOADER_KEYS, key)

    def build_loader(self, split: str, seed: int, distributed: bool, resumable: bool = False):
        key = f"{split}_dataloader"
        if split != "train" and not self.cfg.get(key):
            return None
        return build_loader(self.cfg[key], split == "train", seed, distributed, key, resumable=resumable)

    def build_model(self, train_loader, val_loader) -> nn.Module:
        model = build_model(self.cfg["model"])
        check_label_range(train_loader.dataset, model.num_classes, "train_dataloader", allow_unlabelled=False)
        if val_loader is not None:
            check_label_range(val_loader.dataset, model.num_classes, "val_dataloader")
            if count_labelled(val_loader.dataset) == 0:
                raise ConfigError(
                    f"val_dataloader: none of the {len(val_loader.dataset)} samples has a label "
                    "(all -1), so validation could score nothing; give a labelled list or drop "
                    "val_dataloader"
                )
        return model

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        model.to(device)
        self.blending = self._build_blending(model)
        self.channels_last = bool(self.cfg.get("channels_last"))
        if self.channels_last:
            model.to(memory_format=torch.channels_last_3d)
        return model

    @staticmethod
    def _build_blending(model: nn.Module):
        """mmaction2's ``data_preprocessor.blending`` (mixup / cutmix on each training batch), or None."""
        blending_cfg = getattr(model, "data_preprocessor", {}).get("blending")
        if not blending_cfg:
            return None
        blending = build_blending(blending_cfg)
        if blending.num_classes != model.num_classes:
            raise ConfigError(
                f"data_preprocessor.blending has num_classes={blending.num_classes}, but the model has "
                f"{model.num_classes} (model.cls_head.num_classes)"
            )
        return blending

    def losses(
        self, model: nn.Module, forward: Callable, batch: dict, device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, torch.Tensor]:
        inputs = prepare_inputs(batch["inputs"], model, device)
        labels = torch.as_tensor(batch["label"]).to(device)
        if self.blending is not None:  # [B, V, C, T, H, W] and [B] -> blended clips and soft labels [B, K]
            inputs, labels = self.blending(inputs, labels)
        num_views = inputs.shape[1]
        clips = inputs.flatten(0, 1)  # [B * V, C, T, H, W]
        if self.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        if num_views > 1:
            labels = labels.repeat_interleave(num_views, dim=0)
        self._clips = clips
        with autocast():
            scores = forward(clips)  # through DDP so that gradients are all-reduced
        head = model.cls_head
        assert isinstance(head, BaseHead)  # a recognizer's head (SlowFastHead, I3DHead)
        return head.loss(scores.float(), labels)

    def predicts_finite(self, model: nn.Module, device: torch.device, autocast: Callable[[], Any]) -> bool:
        with autocast():
            scores = model(self._clips)
        return bool(torch.isfinite(scores).all())

    def validate(
        self, model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None, progress: bool
    ) -> dict:
        scores, labels = collect_scores(model, loader, device, amp_dtype, progress, "val")
        if len(labels) == 0:
            if dist_utils.is_main_process():
                logger.warning("validation scored nothing: not one validation sample could be read")
            return {"num_samples": 0}
        metrics = classification_metrics(scores, labels)
        metrics.pop("confusion_matrix", None)
        if metrics["num_samples"] == 0:  # nothing labelled could be read: no accuracy to report or to pick best.pth by
            if dist_utils.is_main_process():
                logger.warning("validation scored nothing: no labelled validation sample could be read")
            return {k: v for k, v in metrics.items() if k.startswith("num_")}
        return metrics

    def score(self, metrics: dict) -> float:
        return metrics.get("top1_acc", metrics.get("mean_average_precision", -1))  # mAP: multi-label

    def describe_validation(self, record: dict) -> list[str]:
        if "val_top1_acc" in record:
            top5 = f", top-5 {100 * record['val_top5_acc']:.1f} %" if "val_top5_acc" in record else ""
            return [f"val top-1 {100 * record['val_top1_acc']:.1f} %{top5}"]
        if "val_mean_average_precision" in record:
            return [f"val mAP {record['val_mean_average_precision']:.3f}"]
        if "val_num_samples" in record:
            return ["val: no sample could be read"]
        return []

    def after_train_epoch(self, loop: TrainingLoop) -> None:
        precise = self.cfg.get("precise_bn")
        if precise:
            precise_batchnorm(loop.model, loop.train_loader, loop.device, int(precise.get("num_iters", 200)))

    def checkpoint_meta(self) -> dict:
        return {}


class Trainer(TrainingLoop):
    """Runs recognition training (and periodic validation) from a full config dict.

    Config keys read: those of :class:`RecognitionTask` and of :class:`~lateral.engine.loop.TrainingLoop`
    (``train_cfg``, ``optim_wrapper``, ``param_scheduler``, ``default_hooks``, ``load_from``, ``randomness.seed``,
    ``sync_bn``, ``tensorboard``).
    """

    def __init__(
        self,
        cfg: dict,
        work_dir: str | Path,
        resume: str | None = None,
        amp: str | None = None,
        device: str | None = None,
        progress: bool = True,
    ):
        super().__init__(RecognitionTask(cfg), work_dir, resume=resume, amp=amp, device=device, progress=progress)

    def precise_bn(self, num_iters: int) -> None:
        """Recompute BatchNorm statistics as true averages over ``num_iters`` training batches."""
        precise_batchnorm(self.model, self.train_loader, self.device, num_iters)


def train(
    cfg: dict,
    work_dir: str | Path,
    resume: str | None = None,
    amp: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Build a :class:`Trainer` from ``cfg`` and run it; see the class for the keys read."""
    trainer = Trainer(cfg, work_dir, resume=resume, amp=amp, device=device, progress=progress)
    try:
        return trainer.run()
    finally:
        trainer.close()
