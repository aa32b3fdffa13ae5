"""Batching: a collate that drops failed samples, and a seeded DataLoader whose workers are safe to start.

A batch is ``dict(inputs=[B, V, C, T, H, W], label=[B] (int64) or [B, K] (float, multi-label), meta=[...])``;
the engine reads ``inputs`` and ``label``. When every sample of a batch failed, ``collate`` returns None and the
DataLoader yields None: skip it.

Workers start from a ``forkserver`` by default, not by forking the main process: a forked worker inherits the
parent's decoder and scaler state without the threads behind it. PyAV 18.1.1 keeps one FFmpeg scaler with slice
threads per thread; a worker forked after the parent had converted one frame blocked forever in its first
``to_ndarray`` (``sws_frame_setup -> avpriv_slicethread_free -> pthread_cond_destroy``). The fork server is a fresh
interpreter that has imported torch, numpy, PyAV and ``lateral.data`` once and never decoded anything; a worker
is a fork of it. And a loader whose workers deliver nothing for ``timeout`` seconds stops with
:class:`DataLoaderStalled`, naming each worker's file, instead of waiting forever.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from lateral.data.sampling import seed_data_rng
from lateral.errors import InputError, LateralError

__all__ = [
    "collate",
    "build_dataloader",
    "DataLoaderStalled",
    "worker_context",
    "worker_start_methods",
    "DEFAULT_STALL_TIMEOUT",
]

# seconds a loader with workers may deliver no batch before it is called stalled: generous, since one batch of
# long, high-resolution videos on a loaded machine can take a minute to decode
DEFAULT_STALL_TIMEOUT = 600.0

# how often a waiting loader checks that its workers are alive (torch's own interval)
_POLL_SECONDS = 5.0

# imported once by the fork server, so that each worker starts without importing them again
_FORKSERVER_PRELOAD = ["torch", "numpy", "av", "lateral.data"]


class DataLoaderStalled(LateralError, RuntimeError):
    """The DataLoader's workers delivered no batch within the stall timeout."""


def worker_start_methods() -> list[str]:
    """The worker start methods this platform offers, the default (``forkserver``, else ``spawn``) first."""
    available = multiprocessing.get_all_start_methods()
    preferred = [method for method in ("forkserver", "spawn") if method in available]
    return preferred + [method for method in available if method not in preferred]


def worker_context(start_method: str | None = None) -> multiprocessing.context.BaseContext:
    """The multiprocessing context DataLoader workers start from: ``start_method``, or the platform's default of
    :func:`worker_start_methods`; a fork server imports the data libraries once, before any decoding."""
    methods = worker_start_methods()
    method = start_method or methods[0]
    if method not in methods:
        raise InputError(
            f"multiprocessing_context '{method}' is not available here; expected one of {', '.join(methods)}"
        )
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # only takes effect before this process's fork server starts; '__main__' is left out so that the server
        # does not run the user's script
        context.set_forkserver_preload(_FORKSERVER_PRELOAD)
        # start the server (and its imports) now, in the background, while the caller builds its model
        multiprocessing.forkserver.ensure_running()
    return context


class _StallWatchingIter(_MultiProcessingDataLoaderIter):
    """torch's multi-process iterator, waiting for a batch in short polls (each checks that the workers are alive)
    up to ``stall_timeout`` seconds in all.

    torch's own ``timeout`` waits in one piece: a worker that died during start-up (a script without a main guard
    re-run in the worker) was noticed only when the whole timeout had passed, since workers started from a fork
    server are not this process's children and send it no SIGCHLD.
    """

    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    describe_stall: Callable[[float], str]

    def _get_data(self) -> Any:
        waited = 0.0
        while not self.stall_timeout or waited < self.stall_timeout:
            if self._pin_memory and not self._pin_memory_thread.is_alive():
                raise RuntimeError("Pin memory thread exited unexpectedly")
            poll = _POLL_SECONDS if not self.stall_timeout else min(_POLL_SECONDS, self.stall_timeout - waited)
            try:
                success, data = self._try_get_data(poll)
            except RuntimeError as err:  # a worker died
                raise RuntimeError(
                    f"{err}; if its traceback above says 'bootstrapping phase', the script that "
                    f"iterates the data loader needs an \"if __name__ == '__main__':\" guard "
                    f"(workers start from a fork server, as with 'spawn')"
                ) from None
            if success:
                return data
            waited += poll
        raise DataLoaderStalled(self.describe_stall(waited))


class _WatchedDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose workers' batches are waited for with :class:`_StallWatchingIter`."""

    stall_timeout: float = DEFAULT_STALL_TIMEOUT

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        iterator = _StallWatchingIter(self)
        iterator.stall_timeout = self.stall_timeout
        iterator.describe_stall = self._stall_message
        return iterator

    def _stall_message(self, waited: float) -> str:
        lines = [f"the data loader delivered no batch for {waited:.0f} s ({self.num_workers} worker processes)"]
        reads: list[tuple[str, str, float]] = getattr(self.dataset, "reads_in_progress", lambda: [])()
        lines += [f"  {process} has been reading {source} for {seconds:.0f} s" for process, source, seconds in reads]
        if not reads:
            lines.append("  no worker is inside a sample read (stuck in collate, or a worker process is frozen)")
        lines.append(
            "raise the limit with the dataloader's 'timeout' setting (seconds; 0: no limit) if the files "
            "are just slow; a worker stuck in a decoder hangs on that file: check it with "
            "'lateral data check --full'"
        )
        return "\n".join(lines)


def _label_tensor(labels: list[Any]) -> torch.Tensor:
    values = [label.numpy() if isinstance(label, torch.Tensor) else np.asarray(label) for label in labels]
    if all(v.ndim == 0 for v in values):
        return torch.as_tensor(np.array([int(v) for v in values]), dtype=torch.int64)
    shapes = {v.shape for v in values}
    if len(shapes) != 1:
        raise InputError(f"collate: labels of different shapes in one batch: {sorted(shapes)}")
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
    inputs = [
        item["inputs"] if isinstance(item["inputs"], torch.Tensor) else torch.as_tensor(item["inputs"])
        for item in items
    ]
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) != 1:
        raise InputError(
            f"collate: items have different input shapes {sorted(shapes)}; use fixed-size crops "
            f"(e.g. CenterCrop or Resize with keep_ratio=False) before FormatShape"
        )
    out: dict[str, Any] = {"inputs": torch.stack(inputs)}
    if all("label" in item for item in items):
        out["label"] = _label_tensor([item["label"] for item in items])
    out["meta"] = [item.get("meta", item.get("img_metas", {})) for item in items]
    return out


def _seed_worker(worker_id: int) -> None:
    # torch gives every worker base_seed + worker_id; derive the data generator from it
    seed_data_rng(torch.initial_seed() % 2**32)


def build_dataloader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = False,
    sampler: torch.utils.data.Sampler | None = None,
    drop_last: bool = False,
    seed: int = 0,
    timeout: float = DEFAULT_STALL_TIMEOUT,
    start_method: str | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader with :func:`collate`, seeded shuffling and augmentation, and persistent workers started from a
    fork server (see the module docstring).

    Args:
        dataset: a dataset from :func:`lateral.data.build_dataset` (or any dataset of such items).
        batch_size: items per batch (fewer when samples fail).
        num_workers: worker processes (0: load in this process).
        shuffle: reshuffle every epoch (ignored when ``sampler`` is given).
        sampler: e.g. a ``DistributedSampler``.
        drop_last: drop the last incomplete batch.
        seed: seeds the shuffling and the pipeline's random choices (differently in every worker).
        timeout: seconds without a batch from the workers before :class:`DataLoaderStalled` (0: wait forever;
            only with workers).
        start_method: how workers start: ``'forkserver'`` (default), ``'spawn'`` or ``'fork'``. Not ``'fork'``
            unless you know no decoder ran in this process: see the module docstring. As with ``spawn``, a script
            that starts workers needs an ``if __name__ == '__main__':`` guard.
    """
    if timeout < 0:
        raise InputError(f"the data loader's timeout must be >= 0 seconds (0: no limit), got {timeout}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    if num_workers == 0:
        seed_data_rng(seed)
    loader = _WatchedDataLoader(
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
        multiprocessing_context=worker_context(start_method) if num_workers > 0 else None,
    )
    loader.stall_timeout = timeout
    return loader
