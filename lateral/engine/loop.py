"""The one training loop: epochs or iterations, DDP, AMP, gradient clipping, checkpoints, resume, logging, failures.

A task (recognition, detection) plugs in through :class:`TrainingTask`: how to build its data loaders and model,
one step's losses, and its validation metrics. Everything else is here, once, in :class:`TrainingLoop`:
* ``train_cfg``: ``EpochBasedTrainLoop`` (``max_epochs``) or ``IterBasedTrainLoop`` (``max_iters``); validation
  every ``val_interval`` epochs or iterations (the iteration loop also validates at the end, as mmengine does);
* checkpoints in ``work_dir``: ``epoch_N.pth`` / ``iter_N.pth`` and ``latest.pth`` (written atomically, the former a
  hard link to the latter), ``best.pth`` when validation improves, at most ``max_keep_ckpts`` numbered files;
* ``resume='auto'``: the newest intact checkpoint (CRC-checked), with the optimizer, schedule, gradient scaler and
  every rank's random-number state, so a resumed run continues the interrupted one bit for bit;
* a NaN or infinite loss stops every rank together, with a rescue checkpoint of the model before that step;
* unreadable samples are skipped and counted; ``log.jsonl`` (and optionally TensorBoard) records the run.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import operator
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lateral.checkpoint import (
    CheckpointError,
    load_checkpoint,
    local_checkpoint_path,
    nonfinite_tensors,
    read_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
    unfilled_keys,
)
from lateral.config import ConfigError, check_bool_flags, check_keys, check_top_level, positive_int_setting
from lateral.data.sampling import data_rng, seed_data_rng
from lateral.engine import distributed as dist_utils
from lateral.engine.evaluate import unwrap
from lateral.engine.optim import build_lr_factor, build_optimizer, clip_gradients
from lateral.errors import LateralError
from lateral.inference.optional import require
from lateral.inference.workarounds import apply_training_workarounds

# Keys the runtime sections of an mmaction2 / mmdet / mmengine config may hold. Those lateral does not act on (e.g.
# the checkpoint hook's save_best: lateral always keeps best.pth) are accepted so that upstream configs load
# unchanged; anything else is a typo and stops the run with the closest match.
TRAIN_CFG_KEYS = ("type", "max_epochs", "max_iters", "val_begin", "val_interval", "dynamic_intervals")
TRAIN_LOOPS = ("EpochBasedTrainLoop", "IterBasedTrainLoop")
HOOK_KEYS = {
    "runtime_info": ("type",),
    "timer": ("type",),
    "logger": (
        "type",
        "interval",
        "ignore_last",
        "interval_exp_name",
        "out_dir",
        "out_suffix",
        "keep_local",
        "file_client_args",
        "log_metric_by_epoch",
        "backend_args",
    ),
    "param_scheduler": ("type",),
    "checkpoint": (
        "type",
        "interval",
        "by_epoch",
        "save_optimizer",
        "save_param_scheduler",
        "out_dir",
        "max_keep_ckpts",
        "save_last",
        "save_best",
        "rule",
        "greater_keys",
        "less_keys",
        "file_client_args",
        "filename_tmpl",
        "published_keys",
        "save_begin",
        "backend_args",
    ),
    "sampler_seed": ("type",),
    "sync_buffers": ("type",),
    "visualization": ("type", "enable", "interval", "show", "wait_time", "out_dir"),
}
RANDOMNESS_KEYS = ("seed", "diff_rank_seed", "deterministic")
SAMPLER_KEYS = ("type", "shuffle", "seed", "round_up")  # mmengine DefaultSampler's; only shuffle changes anything here
LOADER_KEYS = (
    "dataset",
    "batch_size",
    "num_workers",
    "persistent_workers",
    "sampler",
    "pin_memory",
    "drop_last",
    "collate_fn",
    "prefetch_factor",
    "batch_sampler",
    "timeout",
    "multiprocessing_context",
)

__all__ = [
    "NoTrainingDataError",
    "NonFiniteLossError",
    "TrainingTask",
    "LoopSettings",
    "TrainingLoop",
    "EpochSampler",
    "resolve_amp",
    "seed_setting",
]

logger = logging.getLogger("lateral.train")


class NoTrainingDataError(LateralError, RuntimeError):
    """An epoch yielded no readable batch (every sample failed to decode); the message summarises the failures."""


class NonFiniteLossError(LateralError, RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the checkpoint saved before it."""


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """'bf16' | 'fp16' | None -> the autocast dtype (fp16 only on GPU)."""
    if amp in (None, "", "none", "fp32"):
        return None
    if amp == "bf16":
        from lateral.inference.optimization import bf16_supported  # imports the optional optimisation stack

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


# ------------------------------------------------------------------------------------------------ the task side


class TrainingTask(Protocol):
    """What a task supplies to :class:`TrainingLoop`; the loop owns everything else.

    Attributes:
        cfg: the full config dict.
        best_meta_key: the checkpoint ``meta`` key that holds the best validation score (``best_top1``).
    """

    cfg: dict
    best_meta_key: str

    def check_config(self) -> None:
        """Check the task's own config keys (before anything is read or written)."""

    def build_loader(self, split: str, seed: int, distributed: bool, resumable: bool = False):
        """The ``train`` / ``val`` DataLoader (None for a split the config lacks). Its collate gives None for a
        batch of which no sample could be read. ``resumable`` (training in the iteration loop): an
        :class:`EpochSampler`, so that a run resumed mid-epoch continues where it stopped."""

    def build_model(self, train_loader, val_loader) -> nn.Module:
        """The model to train, checked against the data (class counts)."""

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Move the model to ``device`` and put in place what training runs with (memory format, ...). A task
        that puts the model in ``channels_last_3d`` sets ``self.channels_last = True``, so that the loop swaps in
        the CPU workarounds for that layout."""

    def losses(
        self, model: nn.Module, forward: Callable, batch: Any, device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, torch.Tensor]:
        """One training forward through ``forward`` (the DDP wrapper of ``model``, or ``model``) under
        ``autocast()``; keys ``loss*`` are summed into the loss that is back-propagated, every key is logged."""

    def predicts_finite(self, model: nn.Module, device: torch.device, autocast: Callable[[], Any]) -> bool:
        """Whether ``model`` in eval mode predicts finite outputs for the last step's inputs."""

    def validate(
        self, model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None, progress: bool
    ) -> dict:
        """The validation metrics of ``model`` on ``loader`` (every rank gets those of the whole split)."""

    def score(self, metrics: dict) -> float:
        """The number ``best.pth`` is chosen by: >= 0, higher is better; -1 when nothing was scored."""

    def describe_validation(self, record: dict) -> list[str]:
        """Parts of the one-line summary for a record holding ``val_*`` metrics."""

    def after_train_epoch(self, loop: TrainingLoop) -> None:
        """Called after each training epoch, before validation (e.g. precise BatchNorm statistics)."""

    def checkpoint_meta(self) -> dict:
        """Task facts a checkpoint carries in ``meta`` (e.g. class names), so that prediction needs no dataset."""


# ------------------------------------------------------------------------------------------------ settings


@dataclass
class LoopSettings:
    """The loop's part of a config (``train_cfg``, ``default_hooks``, ``randomness``), checked."""

    by_epoch: bool = True
    max_epochs: int = 1
    max_iters: int = 0
    val_interval: int = 1
    val_begin: int = 1
    log_interval: int = 20
    ckpt_interval: int = 1
    max_keep_ckpts: int = -1
    seed: int = 0

    @property
    def unit(self) -> str:
        """What checkpoints and intervals count: ``epoch`` or ``iter``."""
        return "epoch" if self.by_epoch else "iter"

    @property
    def length(self) -> int:
        """``max_epochs`` or ``max_iters``."""
        return self.max_epochs if self.by_epoch else self.max_iters

    @classmethod
    def from_config(cls, cfg: dict) -> LoopSettings:
        check_top_level(cfg)
        train_cfg = check_keys(cfg.get("train_cfg"), TRAIN_CFG_KEYS, "train_cfg")
        loop_type = train_cfg.get("type", "IterBasedTrainLoop" if "max_iters" in train_cfg else "EpochBasedTrainLoop")
        if loop_type not in TRAIN_LOOPS:
            raise ConfigError(f"train_cfg.type must be one of {TRAIN_LOOPS}, got {loop_type!r}")
        by_epoch = loop_type == "EpochBasedTrainLoop"
        wrong = "max_iters" if by_epoch else "max_epochs"
        if wrong in train_cfg:
            raise ConfigError(
                f"train_cfg: an {loop_type} counts in {'epochs' if by_epoch else 'iterations'}: "
                f"replace {wrong} with {'max_epochs' if by_epoch else 'max_iters'}"
            )
        settings = cls(by_epoch=by_epoch)
        if by_epoch:
            settings.max_epochs = positive_int_setting(train_cfg.get("max_epochs", 1), "train_cfg.max_epochs")
        else:
            settings.max_iters = positive_int_setting(train_cfg.get("max_iters", 1000), "train_cfg.max_iters")
        # mmengine's defaults: every epoch, or every 1000 iterations (and at the end)
        default_interval = 1 if by_epoch else 1000
        settings.val_interval = positive_int_setting(
            train_cfg.get("val_interval", default_interval), "train_cfg.val_interval"
        )
        settings.val_begin = positive_int_setting(train_cfg.get("val_begin", 1), "train_cfg.val_begin")
        settings._read_hooks(cfg)
        check_bool_flags(cfg, ("sync_bn", "tensorboard"))
        randomness = check_keys(cfg.get("randomness"), RANDOMNESS_KEYS, "randomness")
        settings.seed = seed_setting(randomness.get("seed"))
        return settings

    def _read_hooks(self, cfg: dict) -> None:
        hooks = check_keys(cfg.get("default_hooks"), HOOK_KEYS, "default_hooks")
        logger_hook = check_keys(hooks.get("logger"), HOOK_KEYS["logger"], "default_hooks.logger")
        self.log_interval = positive_int_setting(logger_hook.get("interval", 20), "default_hooks.logger.interval")
        ckpt_hook = check_keys(hooks.get("checkpoint"), HOOK_KEYS["checkpoint"], "default_hooks.checkpoint")
        self.ckpt_interval = positive_int_setting(
            ckpt_hook.get("interval", 1 if self.by_epoch else 1000), "default_hooks.checkpoint.interval"
        )
        if ckpt_hook.get("by_epoch", self.by_epoch) != self.by_epoch:
            raise ConfigError(
                f"default_hooks.checkpoint.by_epoch={ckpt_hook['by_epoch']} does not fit train_cfg "
                f"({'epochs' if self.by_epoch else 'iterations'}): set by_epoch={self.by_epoch} or "
                "leave it out"
            )
        max_keep = ckpt_hook.get("max_keep_ckpts", -1)
        if type(max_keep) is not int:
            raise ConfigError(
                f"default_hooks.checkpoint.max_keep_ckpts must be a whole number (-1 keeps all), got {max_keep!r}"
            )
        self.max_keep_ckpts = max_keep


class EpochSampler(torch.utils.data.Sampler):
    """This rank's share of an order that is a function of (seed, epoch) only, padded to split evenly over the
    ranks as ``DistributedSampler`` does, and able to start part-way through (a run resumed mid-epoch)."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.num_samples = math.ceil(size / world_size)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, count: int) -> None:
        """Leave out the first ``count`` indices of the next pass only."""
        self._skip = count

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.world_size
        order += (order * math.ceil(total / max(self.size, 1)))[: total - self.size]
        start, self._skip = self._skip, 0
        return iter(order[self.rank : total : self.world_size][start:])

    def __len__(self) -> int:
        return self.num_samples


# ------------------------------------------------------------------------------------------------ helpers


def _rng_state() -> dict[str, Any]:
    legacy_state = np.random.get_state()
    assert isinstance(legacy_state, tuple)  # legacy=True, the default: MT19937's (kind, keys, pos, ...) tuple
    kind, keys, pos, has_gauss, cached = legacy_state
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": random.getstate(),
        "data": data_rng().bit_generator.state,  # the data pipeline's own generator (crops, frame offsets)
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    random.setstate(_as_tuples(state["python"]))
    if "data" in state:
        data_rng().bit_generator.state = state["data"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _file_number(path: Path) -> int:
    """``epoch_12.pth`` / ``iter_12.pth`` -> 12 (-1 for a name of that pattern without a number)."""
    suffix = path.stem.split("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def _failures(loader) -> int:
    """Unreadable sample reads of ``loader``'s dataset so far, in this process and its DataLoader workers."""
    return int(getattr(getattr(loader, "dataset", None), "num_failures", 0))


@dataclass
class _EpochTally:
    """What one pass over the training data did, for its ``epoch`` record."""

    started: float
    failures_before: int
    running: dict[str, float] = field(default_factory=dict)
    seen: int = 0  # steps taken (with a stand-in batch included)
    own_steps: int = 0  # steps on a batch of this rank's own
    skipped: int = 0


# ------------------------------------------------------------------------------------------------ the loop


class TrainingLoop:
    """Train ``task``'s model from its config: epochs or iterations, DDP, AMP, checkpoints, resume, logging.

    Config keys read here: ``train_cfg``, ``optim_wrapper`` (``optimizer``, ``paramwise_cfg``, ``clip_grad``),
    ``param_scheduler``, ``default_hooks`` (``logger.interval``, ``checkpoint.interval`` / ``max_keep_ckpts`` /
    ``by_epoch``), ``load_from``, ``randomness.seed``, ``sync_bn`` and ``tensorboard``; the task reads the rest.

    Args:
        say: where the terminal lines go (one per epoch, or one per log interval of the iteration loop); default
            stderr, with the progress bars, so that stdout keeps only a command's result.
    """

    def __init__(
        self,
        task: TrainingTask,
        work_dir: str | Path,
        resume: str | None = None,
        amp: str | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        say: Callable[[str], None] | None = None,
    ):
        self.task = task
        self.cfg = cfg = task.cfg
        self.work_dir = Path(work_dir)
        self.progress = progress
        self._say = say or (lambda line: tqdm.write(line, file=sys.stderr))
        self.device = dist_utils.resolve_device(device)
        self.distributed = dist_utils.init_distributed(self.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.amp_dtype = resolve_amp(amp, self.device)
        self.settings = LoopSettings.from_config(cfg)
        task.check_config()
        for key in ("model", "train_dataloader", "optim_wrapper"):
            if key not in cfg:
                raise ConfigError(f"the config has no '{key}', which training needs")
        self._build_loaders()  # data first: a missing dataset fails here, before any model is built or file written
        self._build_model()
        self._build_optimization()
        self.start_epoch = 0
        self.iteration = 0
        self.best_score = -1.0
        self.history: list[dict] = []
        self._last_batch: Any = None  # this rank's last readable batch (a stand-in under DDP)
        self._nothing_readable = False  # the stand-in search read the whole dataset and found no readable sample
        self._window: dict[str, float] = {}  # the iteration loop's running sums since its last terminal line
        self._window_start = time.time()
        self._epoch = 0
        self.last_val: dict = {}
        if dist_utils.is_main_process():
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.tb_writer = self._tensorboard()
        self._resume(resume)

    # ------------------------------------------------------------ building

    @property
    def max_epochs(self) -> int:
        return self.settings.max_epochs

    @max_epochs.setter
    def max_epochs(self, value: int) -> None:
        self.settings.max_epochs = value

    @property
    def seed(self) -> int:
        return self.settings.seed

    def _build_loaders(self) -> None:
        # the iteration loop may stop mid-epoch: its sampler can continue from there
        resumable = not self.settings.by_epoch
        self.train_loader = self.task.build_loader("train", self.seed, self.distributed, resumable)
        self.val_loader = self.task.build_loader("val", self.seed, self.distributed)

    def _build_model(self) -> None:
        seed = self.seed + dist_utils.rank()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        seed_data_rng(seed)
        model = self.task.build_model(self.train_loader, self.val_loader)
        if self.cfg.get("load_from"):
            self._load_from(model, self.cfg["load_from"])
        if self.cfg.get("sync_bn") and self.distributed:
            if self.device.type != "cuda":
                raise ConfigError("sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel); remove sync_bn")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = self.task.prepare_model(model, self.device)
        # the CPU kernel workarounds that bf16 autocast and channels-last need, as modules with the same state dict
        apply_training_workarounds(
            self.model, amp=self.amp_dtype, channels_last=getattr(self.task, "channels_last", False)
        )
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model: Any = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        else:
            self.ddp_model = self.model

    def _build_optimization(self) -> None:
        self.optimizer = build_optimizer(self.model, self.cfg["optim_wrapper"])
        self.clip_grad = self.cfg["optim_wrapper"].get("clip_grad")
        self.iters_per_epoch = max(len(self.train_loader), 1)
        self.base_lr = self.optimizer.param_groups[0]["lr"]
        epochs = self.max_epochs if self.settings.by_epoch else self.settings.max_iters / self.iters_per_epoch
        lr_factor = build_lr_factor(self.cfg.get("param_scheduler"), self.iters_per_epoch, epochs, self.base_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)

    def _tensorboard(self):
        if not (self.cfg.get("tensorboard") and dist_utils.is_main_process()):
            return None

        require("tensorboard", "tensorboard")  # names the extra to install if it is missing
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.work_dir / "tensorboard"))

    @staticmethod
    def _load_from(model: nn.Module, value: Any) -> None:
        """``load_from``: start from a checkpoint's weights (a head of another class count is re-initialised)."""
        path = local_checkpoint_path(value, "load_from")
        report = load_checkpoint(model, path, strict=False, drop_mismatched_head=True)
        own = model.state_dict()
        if not report["loaded"]:
            raise CheckpointError(
                f"load_from={path}: not one tensor fits the model (checkpoint keys like "
                f"{report['unexpected'][:3]}, model keys like {list(own)[:3]})"
            )
        missing = unfilled_keys(own, report)
        if missing:
            warnings.warn(
                f"load_from={path} leaves {len(missing)} of {len(own)} model tensors initialised "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})",
                stacklevel=4,
            )

    # ------------------------------------------------------------ resume

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
        if not self.settings.by_epoch:  # continue within the pass the checkpoint was written in
            self.start_epoch, offset = divmod(self.iteration, self.iters_per_epoch)
            self.train_loader.sampler.skip(offset * (self.train_loader.batch_size or 1))
        self.best_score = float(meta.get(self.task.best_meta_key, -1.0))
        self.history = list(meta.get("history", []))
        self._restore_rng(ckpt)
        logger.info("resumed from %s at %s", path, _describe((self.start_epoch, self.iteration)))
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
        kinds = f"latest.pth, {self.settings.unit}_N.pth"
        if not old_log.is_file():  # a new work dir (the demo's first run): nothing to warn about
            logger.info("--resume auto: no checkpoint (%s) in %s; starting from scratch", kinds, self.work_dir)
            return
        number = 1
        while (self.work_dir / f"log.jsonl.{number}").exists():
            number += 1
        kept = old_log.rename(self.work_dir / f"log.jsonl.{number}")
        best = self.work_dir / "best.pth"
        best_note = (
            f" {best.name} is still the earlier run's, until this run's first validation replaces it."
            if best.is_file()
            else ""
        )
        logger.warning(
            "--resume auto: no checkpoint (%s) in %s; starting from scratch. The earlier run's log is "
            "kept as %s and this run writes a new log.jsonl.%s",
            kinds,
            self.work_dir,
            kept.name,
            best_note,
        )
        self._log({"event": "start", "note": f"--resume auto found no checkpoint; the earlier log is {kept.name}"})

    def _newest_readable_checkpoint(self) -> tuple[Path, dict] | None:
        """(path, checkpoint) of the newest intact checkpoint in ``work_dir``, by the epoch and iteration stored in
        it; None when the folder holds no checkpoint.

        ``latest.pth`` is normally the newest, but it may be damaged (a disk that filled up, a copy cut short, bytes
        changed on disk: :func:`read_checkpoint` checks the archive's CRCs) or older than the newest ``epoch_N.pth``
        / ``iter_N.pth`` (restored from a backup, copied from another run). So ``latest.pth`` and the newest intact
        numbered file are both read (only once when one is a hard link to the other) and the later one wins; every
        file passed over is printed with the reason.
        """
        latest = self.work_dir / "latest.pth"
        numbered = sorted(self.work_dir.glob(f"{self.settings.unit}_*.pth"), key=_file_number, reverse=True)
        if not latest.is_file() and not numbered:
            return None
        reader = _CheckpointReader()
        latest_ckpt = reader.read(latest) if latest.is_file() else None
        if not latest.is_file():
            reader.problems.append(f"{latest.name} is missing")
        newest: tuple[Path, dict] | None = None
        for path in numbered:
            if latest_ckpt is not None and _same_file(path, latest):
                break  # the same bytes as latest.pth, already read
            ckpt = reader.read(path)
            if ckpt is not None:
                newest = (path, ckpt)
                break
        choice = (latest, latest_ckpt) if latest_ckpt is not None else newest
        if latest_ckpt is not None and newest is not None:
            latest_at, newest_at = _progress(latest_ckpt), _progress(newest[1])
            if newest_at > latest_at:
                choice = newest
                reader.problems.append(
                    f"{latest.name} holds {_describe(latest_at)}, older than {newest[0].name} with "
                    f"{_describe(newest_at)} (latest.pth restored from a backup or copied from another run?)"
                )
        if choice is None:
            raise CheckpointError(
                f"--resume auto: no checkpoint in {self.work_dir} can be read:\n  "
                + "\n  ".join(reader.problems)
                + "\nStart the run again without --resume (or in a new work_dir)."
            )
        path, ckpt = choice
        if reader.problems and dist_utils.is_main_process():
            logger.warning(
                "resuming from %s, because %s (%s holds %s)",
                path.name,
                "; ".join(reader.problems),
                path.name,
                _describe(_progress(ckpt)),
            )
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
            logger.warning(
                "the checkpoint was written by %d process(es) and this run has %d: the random-number "
                "streams are re-seeded, so the resumed run is not bit-identical to an uninterrupted one",
                len(per_rank),
                dist_utils.world_size(),
            )
        reseed = self.seed * 100_003 + self.start_epoch * 1009 + dist_utils.rank()
        random.seed(reseed)
        np.random.seed(reseed % 2**32)
        torch.manual_seed(reseed)

    # ------------------------------------------------------------ checkpoints

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
                self.task.best_meta_key: self.best_score,
                "history": self.history,
                "config": self.cfg,
                "lateral_version": __import__("lateral").__version__,
                **self.task.checkpoint_meta(),
            },
        }

    def save(self, number: int, name: str | None = None) -> Path | None:
        """Write ``epoch_N.pth`` / ``iter_N.pth`` (N = ``number``; or ``name``) and ``latest.pth`` atomically.

        Every rank must call it: the ranks' random-number states are gathered into the checkpoint, so that a run
        resumed under ``torchrun`` continues each rank's stream. Rank 0 writes and returns the path; others None.
        """
        rng_ranks = dist_utils.all_gather_objects(_rng_state())
        file_name = name or f"{self.settings.unit}_{number}.pth"
        # the last update can overflow with no loss left to show it; saving that would replace the intact
        # latest.pth with a model that predicts NaN (all ranks decide together: they all raise or none)
        bad = nonfinite_tensors(unwrap(self.model).state_dict())
        if not dist_utils.all_ranks_true(not bad, self.device):
            raise NonFiniteLossError(
                f"the model became non-finite in the last update before saving {file_name} "
                f"({_names(bad) or 'on another rank'}), so it was not saved; the files in {self.work_dir} are as "
                "they were. Lower the learning rate" + ("" if self.clip_grad else " or enable clip_grad") + "."
            )
        if not dist_utils.is_main_process():
            return None
        epoch = number if self.settings.by_epoch else self.iteration // self.iters_per_epoch
        state = self.checkpoint_dict(epoch, rng_ranks)
        path = self.work_dir / file_name
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
        if self.settings.max_keep_ckpts <= 0:
            return
        numbered = sorted(self.work_dir.glob(f"{self.settings.unit}_*.pth"), key=_file_number)
        for old in numbered[: -self.settings.max_keep_ckpts]:
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

    def say(self, line: str) -> None:
        """A terminal line, from rank 0 only."""
        if dist_utils.is_main_process():
            self._say(line)

    def _say_epoch(self, record: dict) -> None:
        """One terminal line per finished epoch: training loss, validation metrics when it ran, time."""
        loss = f"loss {record['loss']:.3f} " if "loss" in record else ""
        parts = [f"epoch {record['epoch']}/{self.max_epochs}", f"{loss}({record['seconds']:.0f} s)"]
        self.say("  ".join(parts + self.task.describe_validation(record)))

    def _say_iterations(self, step: dict) -> None:
        """The iteration loop's terminal line: losses averaged since the last one, the learning rate, the time left."""
        count = max(self._window.pop("count", 1.0), 1.0)
        seconds = (time.time() - self._window_start) / count
        parts = " ".join(
            f"{name.replace('loss_', '')} {value / count:.3f}"
            for name, value in self._window.items()
            if name.startswith("loss_")
        )
        eta = (self.settings.max_iters - self.iteration) * seconds / 60
        self.say(
            f"iter {self.iteration}/{self.settings.max_iters} loss {self._window.get('loss', 0.0) / count:.3f} "
            f"({parts}) lr {step['lr']:.4g} {seconds:.2f} s/iter eta {eta:.1f} min"
        )
        self._window, self._window_start = {}, time.time()

    # ------------------------------------------------------------ one step

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_step(self, batch: Any, loss_weight: float = 1.0, stand_in: bool = False) -> dict[str, float]:
        """One optimizer step on ``batch``; returns the logged values (losses unweighted, the step's lr).

        ``loss_weight`` scales the loss that is back-propagated. ``stand_in``: this rank had no readable batch and
        runs a former one at weight 0 only to take part in DDP's gradient all-reduce; its BatchNorm statistics are
        put back afterwards, so the stale batch leaves no trace.
        """
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it afterwards)
        # the forward updates BatchNorm statistics; a rescue checkpoint after a non-finite loss must not hold those
        buffers_before = [b.detach().clone() for b in self.model.buffers()]
        losses = self.task.losses(self.model, self.ddp_model, batch, self.device, self._autocast)
        loss_terms = [v for k, v in losses.items() if k.startswith("loss")]
        if not loss_terms:
            raise LateralError(f"the task's losses have no 'loss*' entry to optimise, only {sorted(losses)}")
        loss = functools.reduce(operator.add, loss_terms)  # sum(), without its int start
        # The forward's BatchNorm statistics are checked too: activations that overflow make a running_var
        # infinite while the normalised output (x / sqrt(inf) = 0) still gives a finite loss, and an infinite
        # running statistic never comes back (the model predicts NaN in eval mode from then on).
        finite = bool(torch.isfinite(loss)) and _all_finite(self.model.buffers())
        # all ranks stop together: one rank stopping alone would leave the others in the gradient all-reduce
        if not dist_utils.all_ranks_true(finite, self.device):
            self._stop_on_nonfinite_loss(loss, buffers_before)
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

    def _stop_on_nonfinite_loss(self, loss: torch.Tensor, buffers_before: list[torch.Tensor]) -> None:
        """Save the model as it was before the failing step (when every tensor of it is still finite) and raise.

        The saved model is tried on the failing step's inputs in eval mode, and the message says whether it predicts
        finite outputs (a model whose weights have diverged over several steps is finite in every tensor but
        overflows in its first layers).
        """
        failing = self.iteration + 1  # iterations are counted from 1 in the log
        broken_stats = [
            name
            for name, buffer in self.model.named_buffers()
            if buffer.is_floating_point() and not bool(torch.isfinite(buffer).all())
        ]
        with torch.no_grad():
            for buffer, before in zip(self.model.buffers(), buffers_before):
                buffer.copy_(before)
        if not bool(torch.isfinite(loss)):
            what = f"the loss became {loss.item()}"
        elif broken_stats:
            what = (
                f"the BatchNorm statistics became non-finite ({_names(broken_stats)}; the activations "
                f"overflowed) although the loss was {loss.item():.4g}"
            )
        else:
            what = "the loss or the BatchNorm statistics became non-finite on another rank"
        where = f"at iteration {failing} (epoch {self._epoch + 1})"
        # every tensor a resumed run would start from: weights, BatchNorm statistics and the optimizer's state
        # (the same on every rank: parameters and optimizer state are identical under DDP, buffers broadcast)
        bad = nonfinite_tensors(unwrap(self.model).state_dict()) + [
            f"optimizer.{name}" for name in nonfinite_tensors(self.optimizer.state_dict()["state"], "state")
        ]
        if not bad:
            path = self.save(self._epoch, name=f"nonfinite_iter{failing}.pth")
            kept = f"the model before this step is saved in {path or self.work_dir / f'nonfinite_iter{failing}.pth'}"
            if not self._predicts_finite():
                kept += (
                    ", but in eval mode it predicts non-finite scores for this step's clips (its weights had "
                    "already diverged): it is kept for inspection, not for use"
                )
        else:
            latest = self.work_dir / "latest.pth"
            last = f"the last finished epoch is in {latest}" if latest.exists() else "no epoch had finished yet"
            kept = (
                f"the model's state was already non-finite before this step ({_names(bad)}: an earlier update "
                f"overflowed), so no finite state of this epoch exists and no rescue checkpoint was written; {last}"
            )
        advice = "Lower the learning rate" + (
            " (clip_grad is already on)" if self.clip_grad else " or enable clip_grad"
        )
        raise NonFiniteLossError(f"{what} {where}; {kept}. {advice}.")

    def _predicts_finite(self) -> bool:
        """Whether the bare model (no DDP traffic) in eval mode predicts finite outputs for the last step's inputs."""
        bare = unwrap(self.model)
        bare.eval()
        try:
            with torch.no_grad():
                return self.task.predicts_finite(bare, self.device, self._autocast)
        finally:
            bare.train()

    # ------------------------------------------------------------ the data side of a step

    def _seed_epoch(self, epoch: int) -> None:
        """Make an epoch's shuffling and augmentation a function of (seed, epoch), so a resumed run repeats it.

        (Persistent DataLoader workers keep their own generators across epochs; with them a resumed run is
        statistically, not bitwise, the same.) In the iteration loop a run resumed mid-epoch continues from the
        random state of its checkpoint, not from a fresh seed.
        """
        set_epoch = getattr(getattr(self.train_loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(self.seed * 100_003 + epoch)
        if self.train_loader.num_workers == 0 and not self._resumed_mid_epoch(epoch):
            seed_data_rng(self.seed * 100_003 + epoch * 1009 + dist_utils.rank())

    def _resumed_mid_epoch(self, epoch: int) -> bool:
        return not self.settings.by_epoch and self.iteration > epoch * self.iters_per_epoch

    def _batches(self, epoch: int) -> Iterator:
        """The epoch's batches. Resumed mid-epoch, the loader's iterator is made without drawing from the random
        state the checkpoint restored: the interrupted run drew its seed at the start of the epoch, before that state
        was saved."""
        if not self._resumed_mid_epoch(epoch):
            return iter(self.train_loader)
        saved = _rng_state()
        try:
            return iter(self.train_loader)
        finally:
            _set_rng_state(saved)

    def _stand_in_batch(self) -> Any:
        """A batch for a rank that must join a step before it has read one: the first readable sample of the whole
        dataset, repeated to the loader's batch size (so a stand-in forward draws as many random numbers as one on a
        real batch). The random-number states are put back afterwards. None if no sample can be read at all."""
        dataset = self.train_loader.dataset
        saved = _rng_state()
        try:
            for index in range(len(dataset)):
                item = dataset[index]
                if item is not None:
                    return self.train_loader.collate_fn([item] * (self.train_loader.batch_size or 1))
            return None
        finally:
            _set_rng_state(saved)

    def _take_batch(self, batch: Any, tally: _EpochTally) -> dict[str, float] | None:
        """Train on one loader batch (None: no sample of it could be read); the logged values of this rank's own
        step, or None when it ran none.

        Under DDP every rank must take part in each step's gradient all-reduce (one skipping alone would hang the
        others), so a rank without a batch stands in with its last readable one (before its first: the dataset's
        first readable sample) at loss weight 0, and the ranks with data scale theirs so that the gradient is their
        mean. A step that no rank has data for is skipped.
        """
        have = batch is not None
        if have:
            self._last_batch = batch
        elif self._last_batch is None and self.distributed and not self._nothing_readable:
            # nothing read yet in this run (or since a resume); a single process skips the step anyway, and a
            # dataset found unreadable once is not searched again for every empty batch
            self._last_batch = self._stand_in_batch()
            self._nothing_readable = self._last_batch is None
        with_data, ready = dist_utils.sum_over_ranks([have, have or self._last_batch is not None], self.device)
        if with_data == 0 or ready < dist_utils.world_size():
            tally.skipped += 1
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose here
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()  # the schedule keeps to its planned length: epochs end where it says
            if not self.settings.by_epoch:
                self.iteration += 1  # an iteration is a loader batch: the data position and the schedule stay aligned
            return None
        weight = dist_utils.world_size() / with_data if have else 0.0
        step = self._train_step(batch if have else self._last_batch, loss_weight=weight, stand_in=not have)
        tally.seen += 1
        if not have:
            return None
        tally.own_steps += 1
        for k, v in step.items():
            tally.running[k] = tally.running.get(k, 0.0) + v
        return step

    # ------------------------------------------------------------ epochs and iterations

    def _finished(self, epoch: int) -> bool:
        return epoch >= self.max_epochs if self.settings.by_epoch else self.iteration >= self.settings.max_iters

    def _train_epoch(self, epoch: int) -> None:
        """One pass over the training data (in the iteration loop: until it ends or ``max_iters`` is reached)."""
        self._epoch = epoch
        self._seed_epoch(epoch)
        self.model.train()
        tally = _EpochTally(started=time.time(), failures_before=_failures(self.train_loader))
        show = self.progress and dist_utils.is_main_process()
        desc = f"epoch {epoch + 1}/{self.max_epochs}" if self.settings.by_epoch else f"epoch {epoch + 1}"
        bar = tqdm(self._batches(epoch), desc=desc, total=len(self.train_loader), disable=not show, leave=False)
        for batch in bar:
            step = self._take_batch(batch, tally)
            if step is not None:
                if show:
                    bar.set_postfix(loss=f"{step['loss']:.3f}", lr=f"{step['lr']:.2e}")
                if self.iteration % self.settings.log_interval == 0:
                    self._log({"event": "train", "epoch": epoch + 1, "iter": self.iteration, **step})
            if not self.settings.by_epoch:
                self._after_iteration(step)
                if self._finished(epoch):
                    break
        bar.close()
        self._finish_epoch(epoch, tally)

    def _after_iteration(self, step: dict[str, float] | None) -> None:
        """The iteration loop's periodic work: its terminal line, validation and checkpoints."""
        if step is not None:
            for k, v in step.items():
                self._window[k] = self._window.get(k, 0.0) + v
            self._window["count"] = self._window.get("count", 0.0) + 1
        at, last = self.iteration, self.settings.max_iters
        if (at % self.settings.log_interval == 0 or at == last) and self._window:
            self._say_iterations(step or {"lr": self.optimizer.param_groups[0]["lr"]})
        if (
            self.val_loader is not None
            and at >= self.settings.val_begin
            and (at % self.settings.val_interval == 0 or at == last)
        ):
            metrics = self._validate_and_keep_best(at)
            self._log({"event": "val", "epoch": self._epoch + 1, "iter": at, **metrics})
            self.say(
                "  ".join(
                    [f"iter {at}/{last}"] + self.task.describe_validation({f"val_{k}": v for k, v in metrics.items()})
                )
            )
        if at % self.settings.ckpt_interval == 0 or at == last:
            self.save(at)
            dist_utils.barrier()

    def _finish_epoch(self, epoch: int, tally: _EpochTally) -> None:
        """The epoch's record (log.jsonl, history, the terminal line); in the epoch loop also the hook after the
        epoch, validation, best.pth and the epoch's checkpoint."""
        if tally.seen == 0:
            dataset = self.train_loader.dataset
            summary = dataset.failure_summary() if hasattr(dataset, "failure_summary") else ""
            kept = "nothing was trained or saved" if epoch == self.start_epoch else "the earlier epochs are saved"
            raise NoTrainingDataError(
                f"epoch {epoch + 1}: not one training batch could be read from the {len(dataset)} samples; "
                f"{kept}. {summary}".strip()
            )
        record = {k: v / max(tally.own_steps, 1) for k, v in tally.running.items()}
        record.update(epoch=epoch + 1, seconds=round(time.time() - tally.started, 2), iters=tally.seen)
        failed = int(dist_utils.sum_over_ranks(_failures(self.train_loader) - tally.failures_before, self.device))
        if failed:
            record["failed_samples"] = failed
            record["skipped_batches"] = tally.skipped
            if dist_utils.is_main_process():
                logger.warning(
                    "epoch %d: %d unreadable training sample reads skipped (all ranks); %d batches skipped",
                    epoch + 1,
                    failed,
                    tally.skipped,
                )
        if self.settings.by_epoch:
            self.task.after_train_epoch(self)
            settings = self.settings
            if (
                self.val_loader is not None
                and epoch + 1 >= settings.val_begin
                and (epoch + 1) % settings.val_interval == 0
            ):
                record.update({f"val_{k}": v for k, v in self._validate_and_keep_best(epoch + 1).items()})
        self.history.append(record)
        self._log({"event": "epoch", **record})
        if self.settings.by_epoch:
            self._say_epoch(record)
            if (epoch + 1) % self.settings.ckpt_interval == 0 or epoch + 1 == self.max_epochs:
                self.save(epoch + 1)
            dist_utils.barrier()

    def validate(self) -> dict:
        """The task's validation metrics, with ``failed_samples`` (over every rank's shard) when files were
        unreadable."""
        dist_utils.broadcast_buffers(self.model)  # score every shard with the BN statistics the checkpoint holds
        failures_before = _failures(self.val_loader)
        metrics = self.task.validate(self.model, self.val_loader, self.device, self.amp_dtype, self.progress)
        self.model.train()  # the iteration loop goes on training after a validation mid-epoch
        failed = int(dist_utils.sum_over_ranks(_failures(self.val_loader) - failures_before, self.device))
        return {**metrics, "failed_samples": failed} if failed else metrics

    def _validate_and_keep_best(self, number: int) -> dict:
        """Validate; write ``best.pth`` when the score beats every earlier one (``number``: epoch or iteration)."""
        metrics = self.validate()
        self.last_val = metrics
        score = self.task.score(metrics)
        if score > self.best_score:
            self.best_score = score
            self.save(number, name="best.pth")
        return metrics

    def run(self) -> dict:
        """Train to ``max_epochs`` / ``max_iters``; return a summary with the last validation metrics and the
        checkpoint paths."""
        self.last_val = {}
        epoch = self.start_epoch
        if self._finished(epoch):
            self._log({"event": "done", "note": f"already trained to max_{self.settings.unit}s"})
        while not self._finished(epoch):
            self._train_epoch(epoch)
            epoch += 1
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None
        return {
            "epochs": self.max_epochs,
            "history": self.history,
            "val": self.last_val,
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


class _CheckpointReader:
    """Reads checkpoints for ``--resume auto``, noting why each file passed over was passed over."""

    def __init__(self):
        self.problems: list[str] = []
        self.failed: list[Path] = []

    def read(self, path: Path) -> dict | None:
        for bad in self.failed:  # epoch_N.pth is a hard link to latest.pth: a damaged one is damaged in both
            if _same_file(path, bad):
                self.problems.append(f"{path.name} is the same file as {bad.name} (a hard link)")
                return None
        try:
            return read_checkpoint(path, map_location="cpu")
        except CheckpointError as err:
            self.problems.append(str(err))
            self.failed.append(path)
            return None
