"""``Recognizer3D``: backbone + classification head, with multi-view testing as mmaction2 does it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from lateral.config import ConfigError, check_bool_flags, check_keys, suggest
from lateral.data.blending import build_blending
from lateral.errors import InputError
from lateral.models.heads import BaseHead, average_clips
from lateral.registry import build_model, reapply_pretrained_inits

__all__ = ["Recognizer3D", "check_data_preprocessor"]

_TEST_CFG_KEYS = {"average_clips", "max_testing_views", "feature_extraction", "fcn_test"}
# mmaction2 1.x ActionDataPreprocessor arguments
_PREPROCESSOR_KEYS = ("type", "mean", "std", "to_rgb", "to_float32", "format_shape", "blending")


def check_data_preprocessor(cfg: dict | None, in_channels: int) -> dict:
    """Validate mmaction2's ``data_preprocessor`` for a 3D recognizer and return it as a dict.

    ``mean`` / ``std`` (0-255 scale, one per channel) and ``to_rgb`` (swap the channel order before normalising)
    are applied by :func:`lateral.engine.evaluate.prepare_inputs`; ``blending`` (mixup / cutmix) by the trainer.

    Raises:
        ConfigError: an unknown key or type, a layout other than NCTHW, or mean/std of the wrong length.
    """
    cfg = dict(check_keys(cfg, _PREPROCESSOR_KEYS, "data_preprocessor"))
    kind = cfg.get("type", "ActionDataPreprocessor")
    if kind != "ActionDataPreprocessor":
        raise ConfigError(
            f"data_preprocessor: unknown type '{kind}'.{suggest(str(kind), ['ActionDataPreprocessor'])} "
            "A 3D recognizer takes 'ActionDataPreprocessor'"
        )
    if cfg.get("format_shape", "NCTHW") != "NCTHW":
        raise ConfigError(
            f"data_preprocessor.format_shape='{cfg['format_shape']}': Recognizer3D takes clips as NCTHW "
            "(NCHW is the layout of 2D recognizers such as TSN)"
        )
    for key in ("mean", "std"):
        values = cfg.get(key)
        if values is None:
            continue
        if (
            not isinstance(values, (list, tuple))
            or len(values) != in_channels
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ):
            raise ConfigError(
                f"data_preprocessor.{key} must be {in_channels} numbers (one per channel), got {values!r}"
            )
    if (cfg.get("mean") is None) != (cfg.get("std") is None):
        raise ConfigError(
            "data_preprocessor: give both mean and std, or neither (as mmaction2 requires); with only "
            "one the frames would not be normalised"
        )
    check_bool_flags(cfg, ("to_rgb", "to_float32"), "data_preprocessor.")
    if cfg.get("std") is not None and any(v == 0 for v in cfg["std"]):
        raise ConfigError(f"data_preprocessor.std must not contain 0, got {cfg['std']!r}")
    if cfg.get("blending") is not None:
        build_blending(cfg["blending"])  # a typo in the blending fails when the model is built
    return cfg


class Recognizer3D(nn.Module):
    """A 3D-conv video classifier.

    Args:
        backbone: backbone config dict (e.g. ``dict(type='ResNet3dSlowFast', ...)``) or module.
        cls_head: head config dict (e.g. ``dict(type='SlowFastHead', ...)``) or module.
        neck: not supported (kept so that configs naming ``neck=None`` load).
        train_cfg: must be empty or None (kept so that configs naming it load); mixup/cutmix come from
            ``data_preprocessor.blending``.
        test_cfg: ``average_clips`` ('prob' | 'score' | None), ``max_testing_views`` (views per backbone call
            at test time, bounding memory), ``feature_extraction`` (``predict`` returns pooled backbone features
            ``[N, C_feat]`` averaged over views instead of class scores) and ``fcn_test`` (accepted: the heads pool
            globally, so any test crop size is already scored fully-convolutionally).
        data_preprocessor: mmaction2 1.x ``ActionDataPreprocessor`` settings (``mean``, ``std``, ``to_rgb``,
            ``format_shape``, ``blending``), checked by :func:`check_data_preprocessor`; the engine applies them,
            ``forward`` does not normalise.
    """

    def __init__(
        self,
        backbone: dict | nn.Module,
        cls_head: dict | BaseHead | None = None,
        neck: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        data_preprocessor: dict | None = None,
    ):
        super().__init__()

        if neck is not None:
            raise ConfigError("Recognizer3D: necks are not supported; remove 'neck' from the config")
        self.backbone = build_model(backbone) if isinstance(backbone, dict) else backbone
        if cls_head is None:
            raise ConfigError("Recognizer3D needs a cls_head (e.g. dict(type='SlowFastHead', ...))")
        self.cls_head: BaseHead = build_model(cls_head) if isinstance(cls_head, dict) else cls_head
        self.train_cfg = dict(train_cfg or {})
        if "blending" in self.train_cfg:
            raise ConfigError(
                "model.train_cfg.blending is where mmaction2 0.x kept mixup/cutmix; mmaction2 1.x and "
                "lateral read it from data_preprocessor=dict(..., blending=...): move it there"
            )
        if self.train_cfg:
            raise ConfigError(
                f"model.train_cfg: unknown keys {sorted(self.train_cfg)} (a Recognizer3D reads none; "
                "training settings go in the top-level train_cfg)"
            )
        self.test_cfg = dict(test_cfg or {})
        unknown = set(self.test_cfg) - _TEST_CFG_KEYS
        if unknown:
            raise ConfigError(f"test_cfg: unknown keys {sorted(unknown)}; accepted: {sorted(_TEST_CFG_KEYS)}")
        self.data_preprocessor = check_data_preprocessor(data_preprocessor, self.in_channels)
        check_bool_flags(self.test_cfg, ("feature_extraction", "fcn_test"), "test_cfg.")
        self.feature_extraction = self.test_cfg.get("feature_extraction", False)
        if "average_clips" in self.test_cfg:
            self.average_clips = self.test_cfg["average_clips"]
        else:
            self.average_clips = getattr(self.cls_head, "average_clips", None)
        average_clips(torch.zeros(1, 1), 1, self.average_clips)  # validates the mode
        max_views = self.test_cfg.get("max_testing_views")
        if max_views is not None and (not isinstance(max_views, int) or max_views < 1):
            raise ConfigError(f"test_cfg.max_testing_views must be a positive int, got {max_views!r}")
        self.max_testing_views = max_views
        self.init_weights()

    @property
    def num_classes(self) -> int:
        return self.cls_head.num_classes

    @property
    def in_channels(self) -> int:
        # SlowFast's input is its slow pathway's; nn.Module types attributes as Tensor | Module
        return cast(int, getattr(self.backbone, "slow_path", self.backbone).in_channels)

    def init_weights(self) -> dict | None:
        """Initialise backbone and head as mmaction2 does (loading/inflating ``pretrained`` files if set)."""

        init_backbone = getattr(self.backbone, "init_weights", None)
        report = init_backbone() if init_backbone is not None else None
        if hasattr(self.cls_head, "init_weights"):
            self.cls_head.init_weights()
        reapply_pretrained_inits(self)  # a child's init_cfg checkpoint wins over the initialisation above
        return report

    def extract_feat(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """x: [N, C, T, H, W] -> backbone features (``(slow, fast)`` for SlowFast)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, T, H, W] -> logits [N, num_classes]."""
        if isinstance(x, torch.Tensor) and x.dim() == 6:
            raise InputError(
                f"Recognizer3D.forward takes [N, C, T, H, W]; got 6-D {[int(d) for d in x.shape]}: "
                "use model.predict() for "
                "multi-view input [N, V, C, T, H, W]"
            )
        return self.cls_head(self.extract_feat(x))

    def _pooled_features(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: [M, C, T, H, W] -> [M, C_feat]: each backbone output averaged over T, H, W, concatenated."""
        size = self.max_testing_views or clips.shape[0]
        pooled = []
        for part in clips.split(size):
            features = self.extract_feat(part)
            features = features if isinstance(features, (tuple, list)) else (features,)
            pooled.append(torch.cat([f.mean(dim=(2, 3, 4)) for f in features], dim=1))
        return torch.cat(pooled)

    def _scores_in_chunks(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: [M, C, T, H, W] -> raw scores [M, K], at most ``max_testing_views`` clips per backbone call."""
        if self.max_testing_views is None or clips.shape[0] <= self.max_testing_views:
            return self(clips)
        chunks = [self(part) for part in clips.split(self.max_testing_views)]
        return torch.cat(chunks)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Average the class scores of every view of every sample.

        Args:
            x: [N, V, C, T, H, W] (V views per sample), or [N, C, T, H, W] (one view).

        Returns:
            [N, num_classes] averaged per ``average_clips`` ('prob': softmax then mean; 'score': mean of logits), or
            [N, V, num_classes] when ``average_clips`` is None; with ``test_cfg.feature_extraction``, the backbone's
            globally pooled features (SlowFast: slow then fast, concatenated) averaged over views, [N, C_feat].
        """
        if not isinstance(x, torch.Tensor) or x.dim() not in (5, 6):
            shape = [int(d) for d in x.shape] if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"predict expects [N, V, C, T, H, W] or [N, C, T, H, W], got {shape}")
        if x.dim() == 5:
            x = x.unsqueeze(1)
        num_samples, num_views = x.shape[:2]
        clips = x.reshape(num_samples * num_views, *x.shape[2:])
        if self.feature_extraction:
            return self._pooled_features(clips).view(num_samples, num_views, -1).mean(dim=1)
        scores = self._scores_in_chunks(clips)
        return average_clips(scores, num_views, self.average_clips, getattr(self.cls_head, "multi_class", False))

    def loss(self, x: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """x: [N, C, T, H, W] (or [N, V, C, T, H, W], labels repeated per view); labels: [N] -> losses dict."""
        labels = torch.as_tensor(labels)
        if x.dim() == 6:
            num_views = x.shape[1]
            x = x.reshape(-1, *x.shape[2:])
            labels = labels.repeat_interleave(num_views, dim=0)
        scores = self(x)
        return self.cls_head.loss(scores, labels.to(scores.device))
