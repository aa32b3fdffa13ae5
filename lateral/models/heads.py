"""Classification heads (``SlowFastHead``, ``I3DHead``) and their losses, with mmaction2's names and defaults."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lateral.config import ConfigError
from lateral.errors import InputError
from lateral.registry import build_model

__all__ = ["CrossEntropyLoss", "BCELossWithLogits", "BaseHead", "SlowFastHead", "I3DHead", "build_loss"]


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy on hard labels ``[N]`` or soft labels ``[N, K]`` (e.g. mixup, label smoothing).

    Args:
        loss_weight: factor applied to the loss.
        class_weight: per-class weights (length ``num_classes``), or None.
    """

    def __init__(self, loss_weight: float = 1.0, class_weight: Sequence[float] | None = None):
        super().__init__()
        self.loss_weight = loss_weight
        self.class_weight = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float32)

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """cls_score: [N, K] logits; label: [N] class indices or [N, K] probabilities -> scalar loss."""
        weight = None if self.class_weight is None else self.class_weight.to(cls_score)
        if weight is not None and weight.numel() != cls_score.shape[1]:
            raise InputError(f"class_weight has {weight.numel()} entries for {cls_score.shape[1]} classes")
        if cls_score.shape == label.shape:  # soft labels
            log_prob = F.log_softmax(cls_score, dim=1)
            if weight is not None:
                log_prob = log_prob * weight.unsqueeze(0)
            loss = -(label * log_prob).sum(dim=1).mean()
        else:
            if label.dim() != 1 or label.shape[0] != cls_score.shape[0]:
                raise InputError(
                    f"labels must be [N] class indices or [N, K] probabilities for scores {list(cls_score.shape)}, "
                    f"got {list(label.shape)}"
                )
            if label.numel() and (int(label.min()) < 0 or int(label.max()) >= cls_score.shape[1]):
                raise InputError(
                    f"label {int(label.max()) if int(label.max()) >= cls_score.shape[1] else int(label.min())} is "
                    f"out of range for {cls_score.shape[1]} classes"
                )
            loss = F.cross_entropy(cls_score, label.long(), weight=weight)
        return loss * self.loss_weight


class BCELossWithLogits(nn.Module):
    """Sigmoid binary cross-entropy for multi-label targets ``[N, K]`` in {0, 1} (or smoothed)."""

    def __init__(self, loss_weight: float = 1.0, class_weight: Sequence[float] | None = None):
        super().__init__()
        self.loss_weight = loss_weight
        self.class_weight = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float32)

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """cls_score: [N, K] logits; label: [N, K] -> scalar loss."""
        if label.shape != cls_score.shape:
            raise InputError(
                f"multi-label targets must match the scores {list(cls_score.shape)}, got {list(label.shape)}"
            )
        weight = None if self.class_weight is None else self.class_weight.to(cls_score)
        loss = F.binary_cross_entropy_with_logits(cls_score, label.to(cls_score.dtype), weight=weight)
        return loss * self.loss_weight


_LOSSES = {"CrossEntropyLoss": CrossEntropyLoss, "BCELossWithLogits": BCELossWithLogits}


def build_loss(loss_cfg: dict | nn.Module) -> nn.Module:
    """``dict(type='CrossEntropyLoss', loss_weight=1.0)`` -> the loss module."""
    if isinstance(loss_cfg, nn.Module):
        return loss_cfg

    loss_type = loss_cfg.get("type")
    if loss_type not in _LOSSES:
        raise ConfigError(f"loss_cls type '{loss_type}' is not supported; choose one of {sorted(_LOSSES)}")
    return build_model(loss_cfg)


def average_clips(
    cls_scores: torch.Tensor, num_views: int, mode: str | None, multi_class: bool = False
) -> torch.Tensor:
    """Average per-view scores of each sample.

    Args:
        cls_scores: [N * V, K] raw scores, sample-major (the V views of sample 0 first).
        num_views: V.
        mode: 'prob' (softmax, or sigmoid if multi-class, then mean), 'score' (mean of raw scores) or None (no
            averaging).

    Returns:
        [N, K], or [N, V, K] when ``mode`` is None.
    """
    if mode not in ("prob", "score", None):
        raise ConfigError(f"average_clips must be 'prob', 'score' or None, got {mode!r}")
    if cls_scores.shape[0] % num_views != 0:
        raise InputError(f"{cls_scores.shape[0]} scores cannot be split into groups of {num_views} views")
    scores = cls_scores.view(cls_scores.shape[0] // num_views, num_views, *cls_scores.shape[1:])
    if mode is None:
        return scores
    if mode == "prob":
        scores = torch.sigmoid(scores) if multi_class else F.softmax(scores, dim=2)
    return scores.mean(dim=1)


class BaseHead(nn.Module):
    """What every classification head shares: the loss, label smoothing, top-k accuracy and clip averaging.

    Args:
        num_classes: number of classes K.
        in_channels: channels of the pooled feature.
        loss_cls: loss config, default ``dict(type='CrossEntropyLoss')``.
        multi_class: multi-label targets ``[N, K]`` (use ``BCELossWithLogits``).
        label_smooth_eps: label smoothing for multi-label targets.
        topk: the k of the top-k accuracies reported by :meth:`loss`.
        average_clips: mmaction2 1.x puts the view averaging in the head; 'prob', 'score' or None.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        loss_cls: dict | None = None,
        multi_class: bool = False,
        label_smooth_eps: float = 0.0,
        topk: int | Sequence[int] = (1, 5),
        average_clips: str | None = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.loss_cls = build_loss(loss_cls if loss_cls is not None else {"type": "CrossEntropyLoss"})
        self.multi_class = multi_class
        self.label_smooth_eps = label_smooth_eps
        self.topk = (topk,) if isinstance(topk, int) else tuple(topk)
        self.average_clips = average_clips

    def loss(self, cls_scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """cls_scores: [N, K]; labels: [N] (or [N, K] for multi-label / soft) -> dict with ``loss_cls``, top-k acc."""
        labels = torch.as_tensor(labels, device=cls_scores.device)
        if labels.dim() == 0:
            labels = labels.unsqueeze(0)
        elif (
            labels.dim() == 1 and labels.shape[0] == self.num_classes and cls_scores.shape[0] == 1 and self.multi_class
        ):
            labels = labels.unsqueeze(0)
        losses: dict[str, torch.Tensor] = {}
        if cls_scores.shape != labels.shape:
            for k in self.topk:
                k_eff = min(k, cls_scores.shape[1])
                top = cls_scores.detach().topk(k_eff, dim=1).indices
                hit = (top == labels.view(-1, 1)).any(dim=1).float().mean()
                losses[f"top{k}_acc"] = hit
        elif self.multi_class and self.label_smooth_eps != 0:
            labels = (1 - self.label_smooth_eps) * labels + self.label_smooth_eps / self.num_classes
        losses["loss_cls"] = self.loss_cls(cls_scores, labels)
        return losses

    def _build_classifier(self, spatial_type: str | None, dropout_ratio: float, init_std: float) -> None:
        """Dropout, ``fc_cls`` and the global pooling, registered in mmaction2's order."""
        if spatial_type not in ("avg", None):
            raise ConfigError(f"spatial_type must be 'avg' or None, got {spatial_type!r}")
        self.spatial_type = spatial_type
        self.dropout_ratio = dropout_ratio
        self.init_std = init_std
        self.dropout = nn.Dropout(p=dropout_ratio) if dropout_ratio != 0 else None
        self.fc_cls = nn.Linear(self.in_channels, self.num_classes)
        self.avg_pool = nn.AdaptiveAvgPool3d((1, 1, 1)) if spatial_type == "avg" else None

    def init_weights(self) -> None:
        nn.init.normal_(self.fc_cls.weight, 0.0, self.init_std)
        nn.init.zeros_(self.fc_cls.bias)


class SlowFastHead(BaseHead):
    """Pools the slow and fast features, concatenates them (fast first, as mmaction2) and classifies.

    Args:
        num_classes: K.
        in_channels: C_slow + C_fast (2304 for R50 with beta = 1/8).
        loss_cls: loss config.
        spatial_type: 'avg' for global average pooling; None to feed already-pooled features.
        dropout_ratio: dropout before the classifier (0 disables it).
        init_std: std of the classifier's normal initialisation.
        pool_kernels: ``((t, h, w) slow, (t, h, w) fast)``: pool each pathway with this fixed window (stride 1)
            and average over window positions, as PyTorchVideo / PySlowFast heads do; equals global pooling when
            the features are the window's size (224 crops). None: global average pooling (mmaction2).
        **kwargs: :class:`BaseHead` options (multi_class, label_smooth_eps, topk, average_clips).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        loss_cls: dict | None = None,
        spatial_type: str | None = "avg",
        dropout_ratio: float = 0.8,
        init_std: float = 0.01,
        pool_kernels: Sequence[Sequence[int]] | None = None,
        **kwargs,
    ):
        super().__init__(num_classes, in_channels, loss_cls, **kwargs)
        if pool_kernels is not None and (len(pool_kernels) != 2 or any(len(k) != 3 for k in pool_kernels)):
            raise ConfigError(f"pool_kernels must be ((t, h, w) slow, (t, h, w) fast), got {pool_kernels!r}")
        self.pool_kernels = None if pool_kernels is None else tuple(tuple(int(v) for v in k) for k in pool_kernels)
        self._build_classifier(spatial_type, dropout_ratio, init_std)

    @staticmethod
    def _window_pool(x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
        """[N, C, T, H, W] -> [N, C, 1, 1, 1]: mean over positions of a stride-1 average-pooling window."""
        kernel = tuple(min(k, size) for k, size in zip(kernel, x.shape[2:]))
        return F.avg_pool3d(x, kernel, stride=1).mean(dim=(2, 3, 4), keepdim=True)

    def pool(self, feats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(slow [N, Cs, Ts, H, W], fast [N, Cf, Tf, H, W]) -> [N, Cf + Cs]."""
        if not isinstance(feats, (tuple, list)) or len(feats) != 2:
            raise InputError("SlowFastHead expects the (slow, fast) pair returned by ResNet3dSlowFast")
        x_slow, x_fast = feats
        if self.avg_pool is not None and self.pool_kernels is not None:
            x_slow = self._window_pool(x_slow, self.pool_kernels[0])
            x_fast = self._window_pool(x_fast, self.pool_kernels[1])
        elif self.avg_pool is not None:
            x_slow, x_fast = self.avg_pool(x_slow), self.avg_pool(x_fast)
        x = torch.cat((x_fast, x_slow), dim=1)
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_channels:
            raise InputError(f"SlowFastHead has in_channels={self.in_channels} but the features have {x.shape[1]}")
        return x

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """feats: (slow, fast) -> cls_score [N, K]."""
        x = self.pool(feats)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc_cls(x)


class I3DHead(BaseHead):
    """Global average pooling, dropout and a linear classifier on one ``[N, C, T, H, W]`` feature.

    Arguments as :class:`SlowFastHead` (``dropout_ratio`` defaults to 0.5).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        loss_cls: dict | None = None,
        spatial_type: str | None = "avg",
        dropout_ratio: float = 0.5,
        init_std: float = 0.01,
        **kwargs,
    ):
        super().__init__(num_classes, in_channels, loss_cls, **kwargs)
        self._build_classifier(spatial_type, dropout_ratio, init_std)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, T, H, W] -> [N, C]."""
        if isinstance(x, (tuple, list)):
            raise InputError("I3DHead expects one feature tensor; a SlowFast backbone needs SlowFastHead")
        if self.avg_pool is not None:
            x = self.avg_pool(x)
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_channels:
            raise InputError(f"I3DHead has in_channels={self.in_channels} but the features have {x.shape[1]}")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, T, H, W] -> cls_score [N, K]."""
        x = self.pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc_cls(x)
