"""Batching: a collate that drops failed samples, and a seeded DataLoader.

A batch is ``dict(inputs=[B, V, C, T, H, W], label=[B] (int64) or [B, K] (float, multi-label), meta=[...])``;
the engine reads ``inputs`` and ``label``. When every sample of a batch failed, ``collate`` returns None and the
DataLoader yields None: skip it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from lateral.data.sampling import seed_data_rng

__all__ = ["collate", "build_dataloader"]


def _label_tensor(labels: list[Any]) -> torch.Tensor:
    values = [label.numpy() if isinstance(label, torch.Tensor) else np.asarray(label) for label in labels]
    if all(v.ndim == 0 for v in values):
        return torch.as_tensor(np.array([int(v) for v in values]), dtype=torch.int64)
    shapes = {v.shape for v in values}
    if len(shapes) != 1:
        raise ValueError(f"collate: labels of different shapes in one batch: {sorted(shapes)}")
    return torch.from_numpy(np.stack(values).astype(np.float32))


def collate(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stack dataset items, leaving out the None of failed samples.

    Returns:
        ``inputs`` ``[B, V, C, T, H, W]`` (each item's ``inputs`` with a new leading axis), ``label`` ``[B]``
        int64 or ``[B, K]`` float32 (present when every item has one), ``meta`` (list of the items' ``meta``
        dicts); None when no item is left.
    """
    items = [item for item in batch if item is not None]
    if not items:
        return None
    inputs = [item["inputs"] if isinstance(item["inputs"], torch.Tensor) else torch.as_tensor(item["inputs"])
              for item in items]
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) != 1:
        raise ValueError(f"collate: items have different input shapes {sorted(shapes)}; use fixed-size crops "
                         f"(e.g. CenterCrop or Resize with keep_ratio=False) before FormatShape")
    out: dict[str, Any] = {"inputs": torch.stack(inputs)}
    if all("label" in item for item in items):
        out["label"] = _label_tensor([item["label"] for item in items])
    out["meta"] = [item.get("meta", item.get("img_metas", {})) for item in items]
    return out


def _seed_worker(worker_id: int) -> None:
    # torch gives every worker base_seed + worker_id; derive the data generator from it
    seed_data_rng(torch.initial_seed() % 2**32)


def build_dataloader(dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int = 0,
                     shuffle: bool = False, sampler: torch.utils.data.Sampler | None = None,
                     drop_last: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader with :func:`collate`, seeded shuffling and augmentation, and persistent workers.

    Args:
        dataset: a dataset from :func:`lateral.data.build_dataset` (or any dataset of such items).
        batch_size: items per batch (fewer when samples fail).
        num_workers: worker processes (0: load in this process).
        shuffle: reshuffle every epoch (ignored when ``sampler`` is given).
        sampler: e.g. a ``DistributedSampler``.
        drop_last: drop the last incomplete batch.
        seed: seeds the shuffling and the pipeline's random choices (differently in every worker).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if num_workers == 0:
        seed_data_rng(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
