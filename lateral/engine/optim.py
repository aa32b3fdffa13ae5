"""Optimizers and learning-rate schedules from mmaction2 / mmengine ``optim_wrapper`` and ``param_scheduler`` keys."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lateral.config import ConfigError, check_keys, positive_number_setting, suggest
from lateral.registry import check_kwargs, resolve_type

__all__ = ["build_optimizer", "build_lr_factor", "clip_gradients"]

OPTIMIZERS = {"SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}
_OPTIM_WRAPPER_KEYS = {"type", "optimizer", "paramwise_cfg", "clip_grad", "accumulative_counts", "dtype", "loss_scale"}
CLIP_GRAD_KEYS = ("max_norm", "norm_type", "type", "error_if_nonfinite")
# what each schedule reads (see _schedule_factor); mmengine's convert_to_iter_based and verbose are accepted and unused
_SCHEDULE_COMMON = ("type", "begin", "end", "by_epoch", "convert_to_iter_based", "verbose")
SCHEDULERS = {
    "LinearLR": ("start_factor", "end_factor"),
    "ConstantLR": ("factor",),
    "CosineAnnealingLR": ("T_max", "eta_min", "eta_min_ratio"),
    "MultiStepLR": ("milestones", "gamma"),
    "StepLR": ("step_size", "gamma"),
    "PolyLR": ("eta_min", "power"),
}


def build_optimizer(model: nn.Module, optim_wrapper: dict) -> torch.optim.Optimizer:
    """``dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4), paramwise_cfg=...)``.

    ``paramwise_cfg`` supports ``norm_decay_mult`` and ``bias_decay_mult`` (0 excludes norm weights / biases
    from weight decay). Frozen parameters (``requires_grad=False``) are left out.
    """
    unknown = set(optim_wrapper) - _OPTIM_WRAPPER_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"optim_wrapper: unknown key '{key}'.{suggest(key, _OPTIM_WRAPPER_KEYS)}")
    optim_type, optimizer_class, cfg = resolve_type(
        OPTIMIZERS, {"type": "SGD", **optim_wrapper.get("optimizer", {})}, "optim_wrapper.optimizer"
    )
    # checked before the parameter groups are made, so a misspelt key is reported before anything else
    check_kwargs(optimizer_class, {"params": [], **cfg}, f"optim_wrapper.optimizer ({optim_type})")
    check_keys(optim_wrapper.get("clip_grad"), CLIP_GRAD_KEYS, "optim_wrapper.clip_grad")
    if "lr" not in cfg:
        raise ConfigError("optim_wrapper.optimizer needs an 'lr'")
    positive_number_setting(cfg["lr"], "optim_wrapper.optimizer.lr")
    weight_decay = cfg.get("weight_decay", 0.0)
    paramwise = dict(optim_wrapper.get("paramwise_cfg") or {})
    norm_mult = paramwise.pop("norm_decay_mult", 1.0)
    bias_mult = paramwise.pop("bias_decay_mult", 1.0)
    if paramwise:
        raise ConfigError(f"paramwise_cfg: unsupported keys {sorted(paramwise)}; use norm_decay_mult, bias_decay_mult")

    groups: dict[float, list[nn.Parameter]] = {}
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            mult = 1.0
            if isinstance(module, norm_types):
                mult = norm_mult
            elif name == "bias":
                mult = bias_mult
            groups.setdefault(weight_decay * mult, []).append(param)
    if not groups:
        raise ConfigError("the model has no trainable parameters (are all stages frozen?)")
    param_groups = [{"params": params, "weight_decay": decay} for decay, params in groups.items()]
    try:
        return optimizer_class(param_groups, **cfg)
    except TypeError as err:
        raise ConfigError(f"optimizer {optim_type}: {err}") from None


def clip_gradients(model: nn.Module, clip_grad: dict | None) -> float | None:
    """Clip by global norm per ``dict(max_norm=40, norm_type=2)``; returns the norm before clipping."""
    if not clip_grad:
        return None
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return None
    norm = nn.utils.clip_grad_norm_(params, clip_grad.get("max_norm", 40), clip_grad.get("norm_type", 2))
    return float(norm)


def _schedule_factor(cfg: dict, t: float, base_lr: float, max_t: float) -> float:
    """The multiplier one scheduler contributes at time ``t`` (in its own unit: epochs or iterations)."""
    kind = cfg["type"]
    begin = cfg.get("begin", 0)
    end = cfg.get("end", max_t)
    if t < begin:
        return 1.0
    t_in = min(t, end) - begin
    span = max(end - begin, 1e-12)
    if kind == "LinearLR":
        start, stop = cfg.get("start_factor", 1.0 / 3), cfg.get("end_factor", 1.0)
        return start + (stop - start) * min(t_in / span, 1.0)
    if kind == "ConstantLR":
        return cfg.get("factor", 1.0 / 3) if t < end else 1.0
    if kind == "CosineAnnealingLR":
        t_max = cfg.get("T_max", span)
        if "eta_min_ratio" in cfg:
            floor = cfg["eta_min_ratio"]
        else:
            floor = cfg.get("eta_min", 0.0) / base_lr if base_lr else 0.0
        return floor + (1 - floor) * (1 + math.cos(math.pi * min(t_in, t_max) / t_max)) / 2
    if kind == "MultiStepLR":
        return cfg.get("gamma", 0.1) ** sum(1 for m in cfg["milestones"] if t >= m)
    if kind == "StepLR":
        return cfg.get("gamma", 0.1) ** int(t_in // cfg["step_size"])
    if kind == "PolyLR":
        floor = cfg.get("eta_min", 0.0) / base_lr if base_lr else 0.0
        return floor + (1 - floor) * (1 - min(t_in / span, 1.0)) ** cfg.get("power", 1.0)
    raise AssertionError(kind)


def build_lr_factor(
    param_scheduler: list[dict] | dict | None, iters_per_epoch: int, max_epochs: float, base_lr: float
) -> Callable[[int], float]:
    """Turn mmengine ``param_scheduler`` entries into ``factor(iteration)`` for ``LambdaLR``.

    The entries are chained (their factors multiply), each acting on its ``[begin, end)`` window in epochs
    (``by_epoch=True``, the default, with fractional epochs so warm-up is smooth) or iterations.
    """
    if param_scheduler is None:
        schedulers: list[dict] = []
    elif isinstance(param_scheduler, dict):
        schedulers = [param_scheduler]
    else:
        schedulers = list(param_scheduler)
    for index, cfg in enumerate(schedulers):
        if not isinstance(cfg, dict):
            raise ConfigError(f"param_scheduler.{index} must be a dict, got {type(cfg).__name__}: {cfg!r}")
        kind, keys, kwargs = resolve_type(SCHEDULERS, cfg, f"param_scheduler.{index}")
        cfg = schedulers[index] = {"type": kind, **kwargs}  # without an mmengine scope
        check_keys(cfg, _SCHEDULE_COMMON + keys, f"param_scheduler.{index} ({kind})")
        if kind == "MultiStepLR" and "milestones" not in cfg:
            raise ConfigError("MultiStepLR needs 'milestones'")
        if kind == "StepLR" and "step_size" not in cfg:
            raise ConfigError("StepLR needs 'step_size'")
    iters_per_epoch = max(iters_per_epoch, 1)

    def factor(iteration: int) -> float:
        value = 1.0
        for cfg in schedulers:
            if cfg.get("by_epoch", True):
                value *= _schedule_factor(cfg, iteration / iters_per_epoch, base_lr, max_epochs)
            else:
                value *= _schedule_factor(cfg, iteration, base_lr, max_epochs * iters_per_epoch)
        return value

    return factor
