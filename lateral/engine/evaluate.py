"""Multi-view evaluation of a recognizer over a dataset, distributed-safe (each sample counted exactly once)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lateral.config import ConfigError
from lateral.engine import distributed as dist_utils
from lateral.errors import InputError
from lateral.inference.workarounds import apply_training_workarounds

if TYPE_CHECKING:
    from lateral.models.recognizer import Recognizer3D

__all__ = ["prepare_inputs", "collect_scores", "unwrap", "require_class_scores"]


def unwrap(model: nn.Module) -> nn.Module:
    """The recognizer inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def require_class_scores(model: nn.Module, what: str) -> None:
    """Raise a ConfigError when ``model.predict`` returns features (``test_cfg.feature_extraction``), which
    ``what`` (e.g. 'testing') cannot score."""
    if getattr(unwrap(model), "feature_extraction", False):
        raise ConfigError(
            f"the model's test_cfg sets feature_extraction=True, so predict returns pooled features, "
            f"not class scores, and {what} needs scores: remove it from test_cfg (extract features in "
            "Python with model.predict)"
        )


def prepare_inputs(inputs: torch.Tensor, model: nn.Module, device: torch.device) -> torch.Tensor:
    """Batch from the data loader -> float model input on ``device``.

    inputs: [B, V, C, T, H, W] uint8 (channel order swapped if ``model.data_preprocessor`` has ``to_rgb``, then
    normalised with its mean/std, in the 0-255 range as mmaction2 does) or float (already normalised by a
    ``Normalize`` pipeline step).
    """
    # a recognizer's settings dict (nn.Module types attributes as Tensor | Module)
    preprocessor = cast(dict, model.data_preprocessor)
    mean = preprocessor.get("mean")
    std = preprocessor.get("std")
    if inputs.dim() != 6:
        raise InputError(f"a batch of clips must be [B, V, C, T, H, W], got {list(inputs.shape)}")
    inputs = inputs.to(device, non_blocking=True)
    if inputs.dtype == torch.uint8:
        if preprocessor.get("to_rgb"):  # mmaction2 swaps the channel order before normalising
            inputs = inputs.flip(2)
        inputs = inputs.float()
        if mean is not None and std is not None:
            shape = (1, 1, -1, 1, 1, 1)
            mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(shape)
            std_t = torch.tensor(std, dtype=torch.float32, device=device).view(shape)
            inputs = (inputs - mean_t) / std_t
    return inputs


@torch.no_grad()
def collect_scores(
    model: nn.Module,
    loader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "test",
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model.predict`` over every batch; return (scores [N, K], labels [N]) gathered from all ranks.

    With a process group the loader must use :class:`~lateral.engine.distributed.InferenceSampler` (disjoint,
    unpadded shards), so gathering in rank order holds every decodable sample once.
    """
    recognizer = cast("Recognizer3D", unwrap(model))  # or its lateral.optimize copy
    require_class_scores(recognizer, desc)
    recognizer.eval()
    apply_training_workarounds(recognizer, amp=amp_dtype)  # the plain model under CPU bf16 autocast needs them too
    all_scores, all_labels = [], []
    show = progress and dist_utils.is_main_process()
    for batch in tqdm(loader, desc=desc, disable=not show, leave=False):
        if batch is None:  # every sample of the batch failed to decode
            continue
        inputs = prepare_inputs(batch["inputs"], recognizer, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            scores = recognizer.predict(inputs)
        if scores.dim() == 3:  # average_clips=None: score the sample by the mean over views
            scores = scores.mean(dim=1)
        all_scores.append(scores.float().cpu().numpy())
        all_labels.append(torch.as_tensor(batch["label"]).cpu().numpy())
    num_classes = recognizer.num_classes
    local_scores = np.concatenate(all_scores) if all_scores else np.zeros((0, num_classes), np.float32)
    labels = np.concatenate(all_labels) if all_labels else np.zeros((0,), np.int64)
    gathered = dist_utils.all_gather_objects((local_scores, labels))
    return np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])
