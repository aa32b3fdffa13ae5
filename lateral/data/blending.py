"""Mini-batch blending (mixup, cutmix) as mmaction2's ``data_preprocessor.blending`` does it during training.

``build_blending(dict(type='MixupBlending', num_classes=400, alpha=0.2))`` returns a callable that takes a batch of
clips ``[B, ...]`` (``[B, V, C, T, H, W]`` from the loader) with labels ``[B]`` (class indices) or ``[B, K]``
(multi-hot or soft) and returns the blended clips and soft labels ``[B, K]``. Each sample is mixed with one other
sample of the same batch (a random permutation); the mixing weight comes from ``Beta(alpha, alpha)``. Random
draws use torch's generator, whose state training checkpoints keep per rank.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch

from lateral.config import ConfigError
from lateral.errors import InputError
from lateral.registry import build_from_table

__all__ = ["MixupBlending", "CutmixBlending", "RandomBatchAugment", "BLENDING_TYPES", "build_blending"]


class _PairBlending(abc.ABC):
    """What mixup and cutmix share: the class count, Beta(alpha, alpha) and one-hot labels."""

    def __init__(self, num_classes: int, alpha: float = 0.2):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"{type(self).__name__}: num_classes must be a whole number >= 1, got {num_classes!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ConfigError(f"{type(self).__name__}: alpha must be a positive number, got {alpha!r}")
        self.num_classes = num_classes
        self.alpha = float(alpha)

    def soft_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """[B] class indices -> [B, K] one-hot float; [B, K] is returned as float."""
        if labels.dim() == 1:
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise InputError(
                    f"{type(self).__name__}: labels must lie in 0..{self.num_classes - 1}, got "
                    f"{sorted(set(labels.tolist()))[:10]}"
                )
            return torch.nn.functional.one_hot(labels.long(), self.num_classes).float()
        if labels.dim() != 2 or labels.shape[1] != self.num_classes:
            raise InputError(
                f"{type(self).__name__}: labels must be [B] or [B, {self.num_classes}], got {list(labels.shape)}"
            )
        return labels.float()

    def draw_weight(self) -> float:
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        return float(beta.sample())

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = self.soft_labels(labels.to(clips.device))
        partner = torch.randperm(clips.shape[0]).to(clips.device)
        return self.blend(clips, soft, partner)

    @abc.abstractmethod
    def blend(self, clips: torch.Tensor, soft: torch.Tensor, partner: torch.Tensor):
        """clips [B, ...], soft labels [B, K], partner indices [B] -> (blended clips, blended labels)."""


class MixupBlending(_PairBlending):
    """mixup (Zhang et al. 2018): ``lam * x + (1 - lam) * x[partner]`` for the clips and the labels alike."""

    def blend(self, clips: torch.Tensor, soft: torch.Tensor, partner: torch.Tensor):
        lam = self.draw_weight()
        return lam * clips + (1 - lam) * clips[partner], lam * soft + (1 - lam) * soft[partner]


class CutmixBlending(_PairBlending):
    """CutMix (Yun et al. 2019): a box of area ``1 - lam`` of every frame comes from the partner clip; the labels
    mix by the box's actual share of the frame (after clipping it to the frame)."""

    def blend(self, clips: torch.Tensor, soft: torch.Tensor, partner: torch.Tensor):
        lam = self.draw_weight()
        height, width = clips.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        centre_y = int(torch.randint(height, (1,)))
        centre_x = int(torch.randint(width, (1,)))
        top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height)
        left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width)
        mixed = clips.clone()
        mixed[..., top:bottom, left:right] = clips[partner][..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        return mixed, lam * soft + (1 - lam) * soft[partner]


class RandomBatchAugment:
    """Picks one of several blendings per batch with the given probabilities (the rest: no blending).

    Args:
        augments: blending config dicts (or one).
        probs: one probability per augment, summing to at most 1 (default: equal shares summing to 1).
    """

    def __init__(self, augments: list[dict] | dict, probs: list[float] | float | None = None):
        augments = [augments] if isinstance(augments, dict) else list(augments)
        if not augments:
            raise ConfigError("RandomBatchAugment needs at least one augment")
        self.augments = [
            build_blending(cfg, f"data_preprocessor.blending.augments[{index}]") for index, cfg in enumerate(augments)
        ]
        if probs is None:
            probs = [1.0 / len(self.augments)] * len(self.augments)
        probs = [probs] if isinstance(probs, (int, float)) else probs
        numbers = isinstance(probs, (list, tuple)) and all(
            isinstance(p, (int, float)) and not isinstance(p, bool) for p in probs
        )
        if not numbers or len(probs) != len(self.augments) or any(p < 0 for p in probs) or sum(probs) > 1 + 1e-6:
            raise ConfigError(
                f"RandomBatchAugment: probs must be {len(self.augments)} non-negative numbers summing "
                f"to at most 1, got {probs}"
            )
        self.probs = list(probs)
        class_counts = {augment.num_classes for augment in self.augments}
        if len(class_counts) != 1:
            raise ConfigError(f"RandomBatchAugment: the augments disagree on num_classes ({sorted(class_counts)})")
        self.num_classes = class_counts.pop()

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        choice = float(torch.rand(()))
        total = 0.0
        for augment, prob in zip(self.augments, self.probs):
            total += prob
            if choice < total:
                return augment(clips, labels)
        return clips, self.augments[0].soft_labels(labels.to(clips.device))


BLENDING_TYPES = {
    "MixupBlending": MixupBlending,
    "CutmixBlending": CutmixBlending,
    "RandomBatchAugment": RandomBatchAugment,
}


def build_blending(cfg: dict[str, Any], where: str = "data_preprocessor.blending") -> Any:
    """A blending callable from its config dict (``type`` one of :data:`BLENDING_TYPES`; ``num_classes`` is the
    model's class count)."""
    return build_from_table(BLENDING_TYPES, cfg, where)
