"""Training loop for recognizers: mmaction2 config keys, AMP, DDP, atomic checkpoints, ``--resume auto``.

A run writes into ``work_dir``: ``epoch_N.pth`` and ``latest.pth`` after every epoch (atomically, the previous
file intact if the write fails), ``best.pth`` when validation improves, ``log.jsonl`` (one JSON object per log
line) and optionally TensorBoard events. A killed run continues with ``resume='auto'`` from the last finished
epoch, with the same optimizer, schedule, gradient scaler and random-number state.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lateral.checkpoint import (
    CheckpointError,
    load_checkpoint,
    nonfinite_tensors,
    read_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)
from lateral.config import ConfigError, check_bool_flags, check_keys, check_top_level, positive_int_setting
from lateral.engine import distributed as dist_utils
from lateral.engine.evaluate import collect_scores, prepare_inputs, unwrap
from lateral.engine.metrics import classification_metrics
from lateral.engine.optim import build_lr_factor, build_optimizer, clip_gradients
from lateral.inference.workarounds import apply_training_workarounds
from lateral.registry import build_model

# Keys the runtime sections of an mmaction2 / mmengine config may hold. Those lateral does not act on (e.g. the
# checkpoint hook's save_best: lateral always keeps best.pth) are accepted so that upstream configs load unchanged;
# anything else is a typo and stops the run with the closest match.
TRAIN_CFG_KEYS = ("type", "max_epochs", "val_begin", "val_interval", "dynamic_intervals")
HOOK_KEYS = {
    "runtime_info": ("type",),
    "timer": ("type",),
    "logger": ("type", "interval", "ignore_last", "interval_exp_name", "out_dir", "out_suffix", "keep_local",
               "file_client_args", "log_metric_by_epoch", "backend_args"),
    "param_scheduler": ("type",),
    "checkpoint": ("type", "interval", "by_epoch", "save_optimizer", "save_param_scheduler", "out_dir",
                   "max_keep_ckpts", "save_last", "save_best", "rule", "greater_keys", "less_keys",
                   "file_client_args", "filename_tmpl", "published_keys", "save_begin", "backend_args"),
    "sampler_seed": ("type",),
    "sync_buffers": ("type",),
    "visualization": ("type", "enable", "interval", "show", "wait_time", "out_dir"),
}
RANDOMNESS_KEYS = ("seed", "diff_rank_seed", "deterministic")
SAMPLER_KEYS = ("type", "shuffle", "seed", "round_up")  # mmengine DefaultSampler's; only shuffle changes anything here
LOADER_KEYS = ("dataset", "batch_size", "num_workers", "persistent_workers", "sampler", "pin_memory", "drop_last",
               "collate_fn", "prefetch_factor", "batch_sampler", "timeout", "multiprocessing_context")

__all__ = ["NoTrainingDataError", "NonFiniteLossError", "Trainer", "train", "resolve_amp", "build_loader"]

logger = logging.getLogger("lateral.train")


class NoTrainingDataError(RuntimeError):
    """An epoch yielded no readable batch (every sample failed to decode); the message summarises the failures."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the checkpoint saved before it."""


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """'bf16' | 'fp16' | None -> the autocast dtype (fp16 only on GPU)."""
    if amp in (None, "", "none", "fp32"):
        return None
    if amp == "bf16":
        from lateral.inference.optimization import bf16_supported

        if not bf16_supported(device):
            warnings.warn(
                f"--amp bf16: {device} has no native bf16 (on CPU: AVX-512 BF16 or AMX), so bf16 convolutions are "
                "emulated and training runs far slower than in fp32; drop --amp to train in fp32",
                stacklevel=2,
            )
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("--amp fp16 needs a GPU; on CPU use --amp bf16")
        return torch.float16
    raise ConfigError(f"--amp must be bf16, fp16 or none, got '{amp}'")


def seed_setting(value: Any) -> int:
    """``randomness.seed``: a whole number, or None for 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"randomness.seed must be a whole number (or None), got {value!r}")
    return value


def build_loader(loader_cfg: dict, train: bool, seed: int, distributed: bool, name: str = "the *_dataloader config"):
    """A DataLoader from an mmaction2 ``*_dataloader`` dict (``dataset``, ``batch_size``, ``num_workers``); ``name``
    (e.g. 'test_dataloader') is what error messages call it."""
    from lateral.data import build_dataloader, build_dataset

    check_keys(loader_cfg, LOADER_KEYS, name)
    if "dataset" not in loader_cfg:
        raise ConfigError(f"{name} needs a 'dataset' entry")
    dataset = build_dataset(loader_cfg["dataset"])
    if len(dataset) == 0:
        raise ConfigError(f"the dataset of {loader_cfg['dataset'].get('ann_file', 'the config')} is empty")
    sampler = None
    if distributed:
        if train:
            sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False)
        else:
            sampler = dist_utils.InferenceSampler(len(dataset))
    sampler_cfg = check_keys(loader_cfg.get("sampler"), SAMPLER_KEYS, f"{name}.sampler")
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
    from lateral.data.loader import DEFAULT_STALL_TIMEOUT, worker_start_methods

    timeout = loader_cfg.get("timeout", DEFAULT_STALL_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ConfigError(f"{name}.timeout must be a number of seconds >= 0 (0: no limit), got {timeout!r}")
    start_method = loader_cfg.get("multiprocessing_context")
    if start_method is not None and start_method not in worker_start_methods():
        raise ConfigError(f"{name}.multiprocessing_context must be one of {worker_start_methods()} (or None), got "
                          f"{start_method!r}")
    return {"timeout": float(timeout), "start_method": start_method}


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "python": random.getstate(),
        "data": _data_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached"])
    )
    random.setstate(_as_tuples(state["python"]))
    if "data" in state:
        from lateral.data.sampling import data_rng

        data_rng().bit_generator.state = state["data"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _data_rng_state() -> dict:
    """The data pipeline's own generator (random crops, frame offsets in the main process)."""
    from lateral.data.sampling import data_rng

    return data_rng().bit_generator.state


def _as_tuples(value):
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def _link_or_save(source: Path, target: Path, state: dict) -> None:
    """Make ``target`` a hard link to ``source`` (atomically, no second write), or save ``state`` there."""
    tmp = target.with_name(f".{target.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:  # a file system without hard links
        tmp.unlink(missing_ok=True)
        save_checkpoint(state, target)


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether no floating-point tensor among ``tensors`` holds NaN or infinity (one device sync for all)."""
    checks = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def _names(keys: list[str], shown: int = 3) -> str:
    """``'a, b, c and 5 more'``: a few names of a long list, and how many were left out."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths are one file (``epoch_N.pth`` is a hard link to ``latest.pth``)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _progress(ckpt: dict) -> tuple[int, int]:
    """(epoch, iteration) a training checkpoint was written at; (-1, -1) for a file without that meta."""
    meta = ckpt.get("meta")
    if not isinstance(meta, dict):
        return (-1, -1)
    try:
        return (int(meta.get("epoch", -1)), int(meta.get("iter", -1)))
    except (TypeError, ValueError):
        return (-1, -1)


def _describe(progress: tuple[int, int]) -> str:
    epoch, iteration = progress
    return "no training state" if epoch < 0 else f"epoch {epoch}, iteration {iteration}"


def _epoch_number(path: Path) -> int:
    """``epoch_12.pth`` -> 12 (-1 for a name of that pattern without a number)."""
    suffix = path.stem.split("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


class Trainer:
    """Runs training (and periodic validation) from a full config dict.

    Config keys read (mmaction2 1.x names): ``model``, ``train_dataloader``, ``val_dataloader``,
    ``train_cfg`` (``max_epochs``, ``val_interval``, ``val_begin``), ``optim_wrapper`` (``optimizer``,
    ``paramwise_cfg``, ``clip_grad``), ``param_scheduler``, ``default_hooks`` (``logger.interval``,
    ``checkpoint.interval`` / ``max_keep_ckpts``), ``load_from``, ``randomness.seed``, and lateral's own
    ``sync_bn`` (bool), ``precise_bn`` (``dict(num_iters=...)``), ``tensorboard`` (bool) and ``channels_last``
    (bool: model and training clips in ``channels_last_3d``, which oneDNN runs faster; with bf16 autocast a
    SlowFast-R50 step took 1.62 s against 3.53 s for the fp32 default-layout step on a 2-core AMX CPU).
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
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.progress = progress
        self.device = dist_utils.resolve_device(device)
        self.distributed = dist_utils.init_distributed(self.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.amp_dtype = resolve_amp(amp, self.device)
        check_top_level(cfg)
        train_cfg = check_keys(cfg.get("train_cfg"), TRAIN_CFG_KEYS, "train_cfg")
        self.max_epochs = positive_int_setting(train_cfg.get("max_epochs", 1), "train_cfg.max_epochs")
        self.val_interval = positive_int_setting(train_cfg.get("val_interval", 1), "train_cfg.val_interval")
        self.val_begin = positive_int_setting(train_cfg.get("val_begin", 1), "train_cfg.val_begin")
        hooks = check_keys(cfg.get("default_hooks"), HOOK_KEYS, "default_hooks")
        logger_hook = check_keys(hooks.get("logger"), HOOK_KEYS["logger"], "default_hooks.logger")
        self.log_interval = positive_int_setting(logger_hook.get("interval", 20), "default_hooks.logger.interval")
        ckpt_hook = check_keys(hooks.get("checkpoint"), HOOK_KEYS["checkpoint"], "default_hooks.checkpoint")
        self.ckpt_interval = positive_int_setting(ckpt_hook.get("interval", 1), "default_hooks.checkpoint.interval")
        max_keep = ckpt_hook.get("max_keep_ckpts", -1)
        if type(max_keep) is not int:
            raise ConfigError(f"default_hooks.checkpoint.max_keep_ckpts must be a whole number (-1 keeps all), got "
                              f"{max_keep!r}")
        self.max_keep_ckpts = max_keep
        precise = check_keys(cfg.get("precise_bn"), ("num_iters",), "precise_bn")
        if precise:
            positive_int_setting(precise.get("num_iters", 200), "precise_bn.num_iters")
        check_bool_flags(cfg, ("channels_last", "sync_bn", "tensorboard"))
        randomness = check_keys(cfg.get("randomness"), RANDOMNESS_KEYS, "randomness")
        self.seed = seed_setting(randomness.get("seed"))

        for key in ("model", "train_dataloader", "optim_wrapper"):
            if key not in cfg:
                raise ConfigError(f"the config has no '{key}', which training needs")
        for key in ("train_dataloader", "val_dataloader", "test_dataloader"):  # a typo in any stops the run now
            check_keys(cfg.get(key), LOADER_KEYS, key)
        # data first: a missing dataset path fails here, before any model is built or file written
        self.train_loader = build_loader(cfg["train_dataloader"], True, self.seed, self.distributed, "train_dataloader")
        self.val_loader = None
        if cfg.get("val_dataloader"):
            self.val_loader = build_loader(cfg["val_dataloader"], False, self.seed, self.distributed, "val_dataloader")

        from lateral.data.sampling import seed_data_rng

        random.seed(self.seed + dist_utils.rank())
        np.random.seed(self.seed + dist_utils.rank())
        torch.manual_seed(self.seed + dist_utils.rank())
        seed_data_rng(self.seed + dist_utils.rank())
        model = build_model(cfg["model"])
        from lateral.data.datasets import check_label_range, count_labelled

        check_label_range(self.train_loader.dataset, model.num_classes, "train_dataloader", allow_unlabelled=False)
        if self.val_loader is not None:
            check_label_range(self.val_loader.dataset, model.num_classes, "val_dataloader")
            if count_labelled(self.val_loader.dataset) == 0:
                raise ConfigError(f"val_dataloader: none of the {len(self.val_loader.dataset)} samples has a label "
                                  "(all -1), so validation could score nothing; give a labelled list or drop "
                                  "val_dataloader")
        if cfg.get("load_from"):
            self._load_from(model, cfg["load_from"])
        if cfg.get("sync_bn") and self.distributed:
            if self.device.type != "cuda":
                raise ConfigError("sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel); remove sync_bn")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        self.blending = self._build_blending(model)
        self.channels_last = bool(cfg.get("channels_last"))
        if self.channels_last:
            model.to(memory_format=torch.channels_last_3d)
        apply_training_workarounds(model, amp=self.amp_dtype, channels_last=self.channels_last)  # same state dict
        self.model = model
        self.optimizer = build_optimizer(model, cfg["optim_wrapper"])
        self.clip_grad = cfg["optim_wrapper"].get("clip_grad")
        iters_per_epoch = len(self.train_loader)
        self.base_lr = self.optimizer.param_groups[0]["lr"]
        lr_factor = build_lr_factor(cfg.get("param_scheduler"), iters_per_epoch, self.max_epochs, self.base_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        else:
            self.ddp_model = model
        self.start_epoch = 0
        self.iteration = 0
        self.best_top1 = -1.0
        self.history: list[dict] = []
        self._last_batch: dict | None = None  # this rank's last readable batch (a stand-in under DDP)
        self._nothing_readable = False  # the stand-in search read the whole dataset and found no readable sample
        if dist_utils.is_main_process():
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.tb_writer = None
        if cfg.get("tensorboard") and dist_utils.is_main_process():
            from lateral.inference.exporters import require

            require("tensorboard", "tensorboard")  # names the extra to install if it is missing
            from torch.utils.tensorboard import SummaryWriter

            self.tb_writer = SummaryWriter(str(self.work_dir / "tensorboard"))
        self._resume(resume)

    # ------------------------------------------------------------ checkpoints

    @staticmethod
    def _build_blending(model: nn.Module):
        """mmaction2's ``data_preprocessor.blending`` (mixup / cutmix on each training batch), or None."""
        blending_cfg = getattr(model, "data_preprocessor", {}).get("blending")
        if not blending_cfg:
            return None
        from lateral.data.blending import build_blending

        blending = build_blending(blending_cfg)
        if blending.num_classes != model.num_classes:
            raise ConfigError(f"data_preprocessor.blending has num_classes={blending.num_classes}, but the model has "
                              f"{model.num_classes} (model.cls_head.num_classes)")
        return blending

    @staticmethod
    def _load_from(model: nn.Module, value: Any) -> None:
        """``load_from``: start from a checkpoint's weights (a head of another class count is re-initialised)."""
        from lateral.checkpoint import local_checkpoint_path, unfilled_keys

        path = local_checkpoint_path(value, "load_from")
        report = load_checkpoint(model, path, strict=False, drop_mismatched_head=True)
        own = model.state_dict()
        if not report["loaded"]:
            raise CheckpointError(f"load_from={path}: not one tensor fits the model (checkpoint keys like "
                                  f"{report['unexpected'][:3]}, model keys like {list(own)[:3]})")
        missing = unfilled_keys(own, report)
        if missing:
            warnings.warn(f"load_from={path} leaves {len(missing)} of {len(own)} model tensors initialised "
                          f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})", stacklevel=3)

    def _resume(self, resume: str | None) -> None:
        if not resume:
            return
        if dist_utils.is_main_process():  # a run killed inside a save leaves its temporary file behind
            for stale in remove_partial_checkpoints(self.work_dir):
                logger.info("removed the partial checkpoint %s left by an interrupted save", stale.name)
        if resume == "auto":
            found = self._newest_readable_checkpoint()
            if found is None:
                self._start_without_checkpoint()
                return
            path, ckpt = found
        else:
            path = Path(resume)
            if not path.is_file():
                raise FileNotFoundError(f"--resume: checkpoint not found: {path}")
            ckpt = read_checkpoint(path, map_location="cpu")
        missing = [key for key in ("optimizer", "scheduler", "meta") if key not in ckpt]
        if missing:
            raise CheckpointError(
                f"--resume {path}: this file holds no training state ({', '.join(missing)} missing; a model-zoo or "
                "exported checkpoint carries weights only). To start training from its weights, set "
                f"load_from='{path}' in the config (or --cfg-options load_from={path}) and leave out --resume."
            )
        load_checkpoint(self.model, ckpt, strict=True)
        self._check_optimizer_matches(ckpt, path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        meta = ckpt["meta"]
        self.start_epoch = int(meta["epoch"])
        self.iteration = int(meta["iter"])
        self.best_top1 = float(meta.get("best_top1", -1.0))
        self.history = list(meta.get("history", []))
        self._restore_rng(ckpt)
        self._log({"event": "resume", "checkpoint": str(path), "epoch": self.start_epoch, "iter": self.iteration})

    def _check_optimizer_matches(self, ckpt: dict, path: Path) -> None:
        """Refuse to resume with another optimizer than the one that wrote ``ckpt``: torch would load its state and
        fail on the first step (SGD reading AdamW's groups finds no 'momentum'), or say only that the group counts
        differ."""
        saved_cfg = ckpt["meta"].get("config") if isinstance(ckpt["meta"], dict) else None
        saved_type = None
        if isinstance(saved_cfg, dict):
            saved_type = ((saved_cfg.get("optim_wrapper") or {}).get("optimizer") or {}).get("type")
        current_type = ((self.cfg.get("optim_wrapper") or {}).get("optimizer") or {}).get("type")
        if saved_type is not None and current_type is not None and saved_type != current_type:
            raise CheckpointError(
                f"--resume {path}: the run was started with optimizer {saved_type} and this config asks for "
                f"{current_type}; resume with {saved_type}, or start a new run from these weights with load_from"
            )
        groups = ckpt["optimizer"].get("param_groups", []) if isinstance(ckpt["optimizer"], dict) else []
        if len(groups) != len(self.optimizer.param_groups):
            raise CheckpointError(
                f"--resume {path}: the checkpoint's optimizer has {len(groups)} parameter group(s) and this config's "
                f"has {len(self.optimizer.param_groups)} (paramwise_cfg changed?); resume with the config the run "
                "was started with"
            )

    def _start_without_checkpoint(self) -> None:
        """``--resume auto`` found no checkpoint: say so, and move an earlier run's ``log.jsonl`` aside, so that this
        run's log is not appended to one whose epochs it does not continue."""
        if not dist_utils.is_main_process():
            return
        old_log = self.work_dir / "log.jsonl"
        if not old_log.is_file():
            logger.warning("--resume auto: no checkpoint (latest.pth, epoch_N.pth) in %s; starting from scratch",
                           self.work_dir)
            return
        number = 1
        while (self.work_dir / f"log.jsonl.{number}").exists():
            number += 1
        kept = old_log.rename(self.work_dir / f"log.jsonl.{number}")
        best = self.work_dir / "best.pth"
        best_note = (f" {best.name} is still the earlier run's, until this run's first validation replaces it."
                     if best.is_file() else "")
        logger.warning("--resume auto: no checkpoint (latest.pth, epoch_N.pth) in %s; starting from scratch. The "
                       "earlier run's log is kept as %s and this run writes a new log.jsonl.%s",
                       self.work_dir, kept.name, best_note)
        self._log({"event": "start", "note": f"--resume auto found no checkpoint; the earlier log is {kept.name}"})

    def _newest_readable_checkpoint(self) -> tuple[Path, dict] | None:
        """(path, checkpoint) of the newest intact checkpoint in ``work_dir``, by the epoch and iteration stored in
        it; None when the folder holds no checkpoint.

        ``latest.pth`` is normally the newest, but it may be damaged (a disk that filled up, a copy cut short, bytes
        changed on disk: :func:`read_checkpoint` checks the archive's CRCs) or older than the newest ``epoch_N.pth``
        (restored from a backup, copied from another run). So ``latest.pth`` and the newest intact ``epoch_N.pth``
        are both read (only once when one is a hard link to the other) and the later one wins; every file passed
        over is printed with the reason.
        """
        latest = self.work_dir / "latest.pth"
        epochs = sorted(self.work_dir.glob("epoch_*.pth"), key=_epoch_number, reverse=True)
        if not latest.is_file() and not epochs:
            return None
        problems: list[str] = []
        failed: list[Path] = []

        def attempt(path: Path) -> dict | None:
            for bad in failed:  # epoch_N.pth is a hard link to latest.pth: a damaged one is damaged in both
                if _same_file(path, bad):
                    problems.append(f"{path.name} is the same file as {bad.name} (a hard link)")
                    return None
            try:
                return read_checkpoint(path, map_location="cpu")
            except CheckpointError as err:
                problems.append(str(err))
                failed.append(path)
                return None

        latest_ckpt = attempt(latest) if latest.is_file() else None
        if not latest.is_file():
            problems.append(f"{latest.name} is missing")
        newest_epoch: tuple[Path, dict] | None = None
        for path in epochs:
            if latest_ckpt is not None and _same_file(path, latest):
                break  # the same bytes as latest.pth, already read
            ckpt = attempt(path)
            if ckpt is not None:
                newest_epoch = (path, ckpt)
                break
        choice = (latest, latest_ckpt) if latest_ckpt is not None else newest_epoch
        if latest_ckpt is not None and newest_epoch is not None:
            latest_at, epoch_at = _progress(latest_ckpt), _progress(newest_epoch[1])
            if epoch_at > latest_at:
                choice = newest_epoch
                problems.append(
                    f"{latest.name} holds {_describe(latest_at)}, older than {newest_epoch[0].name} with "
                    f"{_describe(epoch_at)} (latest.pth restored from a backup or copied from another run?)")
        if choice is None:
            raise CheckpointError(f"--resume auto: no checkpoint in {self.work_dir} can be read:\n  "
                                  + "\n  ".join(problems)
                                  + "\nStart the run again without --resume (or in a new work_dir).")
        path, ckpt = choice
        if problems and dist_utils.is_main_process():
            logger.warning("resuming from %s, because %s (%s holds %s)", path.name, "; ".join(problems), path.name,
                           _describe(_progress(ckpt)))
        return path, ckpt

    def _restore_rng(self, ckpt: dict) -> None:
        """Give this rank the random-number state it had when the checkpoint was written.

        Checkpoints hold every rank's state (``rng_ranks``). Resumed with another number of processes, the ranks'
        streams cannot be continued: each is re-seeded from (seed, epoch, rank), and the run is no longer the
        bit-for-bit continuation of the interrupted one.
        """
        per_rank = ckpt.get("rng_ranks") or ([ckpt["rng"]] if "rng" in ckpt else [])
        if not per_rank:
            return
        if len(per_rank) == dist_utils.world_size():
            _set_rng_state(per_rank[dist_utils.rank()])
            return
        if dist_utils.is_main_process():
            logger.warning("the checkpoint was written by %d process(es) and this run has %d: the random-number "
                           "streams are re-seeded, so the resumed run is not bit-identical to an uninterrupted one",
                           len(per_rank), dist_utils.world_size())
        reseed = self.seed * 100_003 + self.start_epoch * 1009 + dist_utils.rank()
        random.seed(reseed)
        np.random.seed(reseed % 2**32)
        torch.manual_seed(reseed)

    def checkpoint_dict(self, epoch: int, rng_ranks: list[dict] | None = None) -> dict[str, Any]:
        """What a checkpoint holds; ``rng_ranks``: every rank's random-number state (default: this process's)."""
        rng_ranks = rng_ranks or [_rng_state()]
        return {
            "state_dict": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "meta": {
                "epoch": epoch,
                "iter": self.iteration,
                "best_top1": self.best_top1,
                "history": self.history,
                "config": self.cfg,
                "lateral_version": __import__("lateral").__version__,
            },
        }

    def save(self, epoch: int, name: str | None = None) -> Path | None:
        """Write ``epoch_N.pth`` (or ``name``) and ``latest.pth`` atomically.

        Every rank must call it: the ranks' random-number states are gathered into the checkpoint, so that a run
        resumed under ``torchrun`` continues each rank's stream. Rank 0 writes and returns the path; others None.
        """
        rng_ranks = dist_utils.all_gather_objects(_rng_state())
        # the last update of an epoch can overflow with no loss left to show it; saving that would replace the
        # intact latest.pth with a model that predicts NaN (all ranks decide together: they all raise or none)
        bad = nonfinite_tensors(unwrap(self.model).state_dict())
        if not dist_utils.all_ranks_true(not bad, self.device):
            raise NonFiniteLossError(
                f"the model became non-finite in the last update before saving {name or f'epoch_{epoch}.pth'} "
                f"({_names(bad) or 'on another rank'}), so it was not saved; the files in {self.work_dir} are as "
                "they were. Lower the learning rate" + ("" if self.clip_grad else " or enable clip_grad") + "."
            )
        if not dist_utils.is_main_process():
            return None
        state = self.checkpoint_dict(epoch, rng_ranks)
        path = self.work_dir / (name or f"epoch_{epoch}.pth")
        if name is not None:
            save_checkpoint(state, path)
            return path
        # latest.pth first: whenever epoch_N.pth exists, latest.pth already holds epoch N (a kill between the
        # two cannot leave resume behind)
        latest = self.work_dir / "latest.pth"
        save_checkpoint(state, latest)
        _link_or_save(latest, path, state)
        self._prune()
        return path

    def _prune(self) -> None:
        if self.max_keep_ckpts <= 0:
            return
        epochs = sorted(self.work_dir.glob("epoch_*.pth"), key=_epoch_number)
        for old in epochs[: -self.max_keep_ckpts]:
            old.unlink(missing_ok=True)

    # ------------------------------------------------------------ logging

    def _log(self, record: dict) -> None:
        if not dist_utils.is_main_process():
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.work_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tb_writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("time", "iter", "epoch"):
                    self.tb_writer.add_scalar(key, value, self.iteration)

    def _say_epoch(self, record: dict) -> None:
        """One terminal line per finished epoch: training loss, validation accuracy when it ran, time. On stderr,
        with the progress bars, so that stdout keeps only a command's result."""
        if not dist_utils.is_main_process():
            return
        loss = f"loss {record['loss']:.3f} " if "loss" in record else ""
        parts = [f"epoch {record['epoch']}/{self.max_epochs}", f"{loss}({record['seconds']:.0f} s)"]
        if "val_top1_acc" in record:
            top5 = f", top-5 {100 * record['val_top5_acc']:.1f} %" if "val_top5_acc" in record else ""
            parts.append(f"val top-1 {100 * record['val_top1_acc']:.1f} %{top5}")
        elif "val_mean_average_precision" in record:
            parts.append(f"val mAP {record['val_mean_average_precision']:.3f}")
        elif "val_num_samples" in record:
            parts.append("val: no sample could be read")
        tqdm.write("  ".join(parts), file=sys.stderr)

    # ------------------------------------------------------------ loop

    def _train_step(self, batch: dict, loss_weight: float = 1.0, stand_in: bool = False) -> dict[str, float]:
        """One optimizer step on ``batch``; returns the logged values (losses unweighted, the step's lr).

        ``loss_weight`` scales the loss that is back-propagated. ``stand_in``: this rank had no readable batch and
        runs a former one at weight 0 only to take part in DDP's gradient all-reduce; its BatchNorm statistics are
        put back afterwards, so the stale batch leaves no trace.
        """
        recognizer = unwrap(self.model)
        inputs = prepare_inputs(batch["inputs"], recognizer, self.device)
        labels = torch.as_tensor(batch["label"]).to(self.device)
        if self.blending is not None:  # [B, V, C, T, H, W] and [B] -> blended clips and soft labels [B, K]
            inputs, labels = self.blending(inputs, labels)
        num_views = inputs.shape[1]
        clips = inputs.flatten(0, 1)  # [B * V, C, T, H, W]
        if self.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        if num_views > 1:
            labels = labels.repeat_interleave(num_views, dim=0)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it afterwards)
        # the forward updates BatchNorm statistics; a rescue checkpoint after a non-finite loss must not hold those
        buffers_before = [b.detach().clone() for b in self.model.buffers()]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            scores = self.ddp_model(clips)  # through DDP so that gradients are all-reduced
        losses = recognizer.cls_head.loss(scores.float(), labels)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        # The forward's BatchNorm statistics are checked too: activations that overflow make a running_var
        # infinite while the normalised output (x / sqrt(inf) = 0) still gives a finite loss, and an infinite
        # running statistic never comes back (the model predicts NaN in eval mode from then on).
        finite = bool(torch.isfinite(loss)) and _all_finite(self.model.buffers())
        # all ranks stop together: one rank stopping alone would leave the others in the gradient all-reduce
        if not dist_utils.all_ranks_true(finite, self.device):
            self._stop_on_nonfinite_loss(loss, buffers_before, clips)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * loss_weight if loss_weight != 1.0 else loss).backward()
        if stand_in:  # after backward: the forward's BatchNorm saved the statistics it updated in place
            with torch.no_grad():
                for buffer, before in zip(self.model.buffers(), buffers_before):
                    buffer.copy_(before)
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.model, self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return {k: float(v.detach()) for k, v in losses.items()} | {"loss": float(loss.detach()), "lr": lr}

    def _stop_on_nonfinite_loss(self, loss: torch.Tensor, buffers_before: list[torch.Tensor],
                                clips: torch.Tensor) -> None:
        """Save the model as it was before the failing step (when every tensor of it is still finite) and raise.

        Args:
            clips: the failing step's clips ``[B * V, C, T, H, W]``; the saved model is tried on them in eval mode,
                and the message says whether it predicts finite scores (a model whose weights have diverged over
                several steps is finite in every tensor but overflows in its first layers).
        """
        failing = self.iteration + 1  # iterations are counted from 1 in the log
        broken_stats = [name for name, buffer in self.model.named_buffers()
                        if buffer.is_floating_point() and not bool(torch.isfinite(buffer).all())]
        with torch.no_grad():
            for buffer, before in zip(self.model.buffers(), buffers_before):
                buffer.copy_(before)
        if not bool(torch.isfinite(loss)):
            what = f"the loss became {loss.item()}"
        elif broken_stats:
            what = (f"the BatchNorm statistics became non-finite ({_names(broken_stats)}; the activations "
                    f"overflowed) although the loss was {loss.item():.4g}")
        else:
            what = "the loss or the BatchNorm statistics became non-finite on another rank"
        where = f"at iteration {failing} (epoch {self._epoch + 1})"
        # every tensor a resumed run would start from: weights, BatchNorm statistics and the optimizer's state
        # (the same on every rank: parameters and optimizer state are identical under DDP, buffers broadcast)
        bad = nonfinite_tensors(unwrap(self.model).state_dict()) + [
            f"optimizer.{name}" for name in nonfinite_tensors(self.optimizer.state_dict()["state"], "state")]
        if not bad:
            path = self.save(self._epoch, name=f"nonfinite_iter{failing}.pth")
            kept = f"the model before this step is saved in {path or self.work_dir / f'nonfinite_iter{failing}.pth'}"
            if not self._predicts_finite(clips):
                kept += (", but in eval mode it predicts non-finite scores for this step's clips (its weights had "
                         "already diverged): it is kept for inspection, not for use")
        else:
            latest = self.work_dir / "latest.pth"
            last = f"the last finished epoch is in {latest}" if latest.exists() else "no epoch had finished yet"
            kept = (f"the model's state was already non-finite before this step ({_names(bad)}: an earlier update "
                    f"overflowed), so no finite state of this epoch exists and no rescue checkpoint was written; {last}")
        advice = "Lower the learning rate" + (" (clip_grad is already on)" if self.clip_grad else " or enable clip_grad")
        raise NonFiniteLossError(f"{what} {where}; {kept}. {advice}.")

    def _predicts_finite(self, clips: torch.Tensor) -> bool:
        """Whether the model in eval mode gives finite scores for ``clips`` (the unwrapped model: no DDP traffic)."""
        recognizer = unwrap(self.model)
        recognizer.eval()
        try:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp_dtype,
                                                 enabled=self.amp_dtype is not None):
                scores = recognizer(clips)
            return bool(torch.isfinite(scores).all())
        finally:
            recognizer.train()

    def precise_bn(self, num_iters: int) -> None:
        """Recompute BatchNorm statistics as true averages over ``num_iters`` training batches."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not bns:
            return
        recognizer = unwrap(self.model)
        momenta = [bn.momentum for bn in bns]
        before = [[b.clone() for b in bn.buffers()] for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average
        self.model.train()
        used = 0
        with torch.no_grad():
            for batch in self.train_loader:
                if used >= num_iters:
                    break
                if batch is None:  # unreadable batches do not count towards num_iters
                    continue
                inputs = prepare_inputs(batch["inputs"], recognizer, self.device)
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
            logger.warning("precise_bn: not one training batch could be read on rank %d; its BatchNorm statistics "
                           "stay those of training", dist_utils.rank())
        dist_utils.average_buffers(self.model)  # each rank saw its own batches: average the statistics

    def validate(self) -> dict:
        dist_utils.broadcast_buffers(self.model)  # score every shard with the BN statistics the checkpoint holds
        failures_before = self._failures(self.val_loader)
        scores, labels = collect_scores(self.model, self.val_loader, self.device, self.amp_dtype, self.progress, "val")
        failed = int(dist_utils.sum_over_ranks(self._failures(self.val_loader) - failures_before, self.device))
        counts = {"failed_samples": failed} if failed else {}  # unreadable val files, every rank's shard
        if len(labels) == 0:
            if dist_utils.is_main_process():
                logger.warning("validation scored nothing: not one validation sample could be read")
            return {"num_samples": 0, **counts}
        metrics = classification_metrics(scores, labels)
        metrics.pop("confusion_matrix", None)
        if metrics["num_samples"] == 0:  # nothing labelled could be read: no accuracy to report or to pick best.pth by
            if dist_utils.is_main_process():
                logger.warning("validation scored nothing: no labelled validation sample could be read")
            return {**{k: v for k, v in metrics.items() if k.startswith("num_")}, **counts}
        return {**metrics, **counts}

    def _seed_epoch(self, epoch: int) -> None:
        """Make an epoch's shuffling and augmentation a function of (seed, epoch), so a resumed run repeats it.

        (Persistent DataLoader workers keep their own generators across epochs; with them a resumed run is
        statistically, not bitwise, the same.)
        """
        from lateral.data.sampling import seed_data_rng

        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(self.seed * 100_003 + epoch)
        if self.train_loader.num_workers == 0:
            seed_data_rng(self.seed * 100_003 + epoch * 1009 + dist_utils.rank())

    def _stand_in_batch(self) -> dict | None:
        """A batch for a rank that must join a step before it has read one: the first readable sample of the whole
        dataset, repeated to the loader's batch size (so a stand-in forward draws as many random numbers as one on a
        real batch). The random-number states are put back afterwards. None if no sample can be read at all."""
        from lateral.data.loader import collate

        dataset = self.train_loader.dataset
        saved = _rng_state()
        try:
            for index in range(len(dataset)):
                item = dataset[index]
                if item is not None:
                    return collate([item] * (self.train_loader.batch_size or 1))
            return None
        finally:
            _set_rng_state(saved)

    @staticmethod
    def _failures(loader) -> int:
        """Unreadable sample reads of ``loader``'s dataset so far, in this process and its DataLoader workers."""
        return int(getattr(loader.dataset, "num_failures", 0))

    def run(self) -> dict:
        """Train to ``max_epochs``; return a summary with the last validation metrics and checkpoint paths."""
        last_val: dict = {}
        if self.start_epoch >= self.max_epochs:
            self._log({"event": "done", "note": "already trained to max_epochs"})
        for epoch in range(self.start_epoch, self.max_epochs):
            self._epoch = epoch
            self._seed_epoch(epoch)
            self.model.train()
            started = time.time()
            running: dict[str, float] = {}
            seen = own_steps = skipped = 0
            failures_before = self._failures(self.train_loader)
            show = self.progress and dist_utils.is_main_process()
            bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.max_epochs}", disable=not show, leave=False)
            for batch in bar:
                # A batch whose every sample failed to decode is None. Under DDP every rank must take part in each
                # step's gradient all-reduce (one skipping alone would hang the others), so a rank without a batch
                # stands in with its last readable one (before its first: the dataset's first readable sample) at
                # loss weight 0, and the ranks with data scale theirs so that the gradient is their mean. A step
                # that no rank has data for is skipped.
                have = batch is not None
                if have:
                    self._last_batch = batch
                elif self._last_batch is None and self.distributed and not self._nothing_readable:
                    # nothing read yet in this run (or since a resume); a single process skips the step anyway, and
                    # a dataset found unreadable once is not searched again for every empty batch
                    self._last_batch = self._stand_in_batch()
                    self._nothing_readable = self._last_batch is None
                with_data, ready = dist_utils.sum_over_ranks(
                    [have, have or self._last_batch is not None], self.device)
                if with_data == 0 or ready < dist_utils.world_size():
                    skipped += 1
                    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose here
                        warnings.simplefilter("ignore", UserWarning)
                        self.scheduler.step()  # the schedule keeps to its planned length: epochs end where it says
                    continue
                weight = dist_utils.world_size() / with_data if have else 0.0
                step = self._train_step(batch if have else self._last_batch, loss_weight=weight, stand_in=not have)
                seen += 1
                if not have:
                    continue
                own_steps += 1
                for k, v in step.items():
                    running[k] = running.get(k, 0.0) + v
                if show:
                    bar.set_postfix(loss=f"{step['loss']:.3f}", lr=f"{step['lr']:.2e}")
                if self.iteration % self.log_interval == 0:
                    self._log({"event": "train", "epoch": epoch + 1, "iter": self.iteration, **step})
            if seen == 0:
                dataset = self.train_loader.dataset
                summary = dataset.failure_summary() if hasattr(dataset, "failure_summary") else ""
                kept = "nothing was trained or saved" if epoch == self.start_epoch else "the earlier epochs are saved"
                raise NoTrainingDataError(
                    f"epoch {epoch + 1}: not one training batch could be read from the {len(dataset)} samples; "
                    f"{kept}. {summary}".strip()
                )
            epoch_record = {k: v / max(own_steps, 1) for k, v in running.items()}
            epoch_record.update(epoch=epoch + 1, seconds=round(time.time() - started, 2), iters=seen)
            failed = int(dist_utils.sum_over_ranks(self._failures(self.train_loader) - failures_before, self.device))
            if failed:
                epoch_record["failed_samples"] = failed
                epoch_record["skipped_batches"] = skipped
                if dist_utils.is_main_process():
                    logger.warning("epoch %d: %d unreadable training sample reads skipped (all ranks); %d batches "
                                   "skipped", epoch + 1, failed, skipped)
            precise = self.cfg.get("precise_bn")
            if precise:
                self.precise_bn(int(precise.get("num_iters", 200)))
            if self.val_loader is not None and (epoch + 1) >= self.val_begin and (epoch + 1) % self.val_interval == 0:
                last_val = self.validate()
                epoch_record.update({f"val_{k}": v for k, v in last_val.items()})
                score = last_val.get("top1_acc", last_val.get("mean_average_precision", -1))  # mAP: multi-label
                if score > self.best_top1:
                    self.best_top1 = score
                    self.save(epoch + 1, name="best.pth")
            self.history.append(epoch_record)
            self._log({"event": "epoch", **epoch_record})
            self._say_epoch(epoch_record)
            if (epoch + 1) % self.ckpt_interval == 0 or epoch + 1 == self.max_epochs:
                self.save(epoch + 1)
            dist_utils.barrier()
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None
        return {
            "epochs": self.max_epochs,
            "history": self.history,
            "val": last_val,
            "latest": str(self.work_dir / "latest.pth"),
            "best": str(self.work_dir / "best.pth") if (self.work_dir / "best.pth").exists() else None,
        }


    def close(self) -> None:
        """Drop the DDP wrapper and the loaders, so that nothing holds the process group any more.

        Call before :func:`lateral.engine.distributed.cleanup`. A DDP reducer that outlives the process group is
        destroyed during interpreter shutdown instead, where gloo's worker threads abort the process (SIGABRT) after
        all the work has been written.
        """
        self.ddp_model = self.model
        self.train_loader = None
        self.val_loader = None
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


def train(cfg: dict, work_dir: str | Path, resume: str | None = None, amp: str | None = None,
          device: str | None = None, progress: bool = True) -> dict:
    """Build a :class:`Trainer` from ``cfg`` and run it; see the class for the keys read."""
    trainer = Trainer(cfg, work_dir, resume=resume, amp=amp, device=device, progress=progress)
    try:
        return trainer.run()
    finally:
        trainer.close()

