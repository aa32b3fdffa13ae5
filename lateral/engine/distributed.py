"""Process-group helpers for ``torchrun`` (DDP): gloo on CPU, NCCL on GPU, rank-0-only writing."""

from __future__ import annotations

import gc
import logging
import os
import pickle
import sys
from typing import Any, NoReturn, overload

import torch
import torch.distributed as dist

from lateral.errors import InputError

__all__ = [
    "resolve_device",
    "init_distributed",
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "barrier",
    "all_gather_objects",
    "broadcast_object",
    "all_ranks_true",
    "sum_over_ranks",
    "InferenceSampler",
    "broadcast_buffers",
    "average_buffers",
    "cleanup",
    "joined_process_group",
    "exit_worker",
]

_joined = False  # whether init_distributed started a process group in this process


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: as given ('cpu', 'cuda', 'cuda:1'), else this rank's GPU when CUDA is available, else
    the CPU.

    Raises:
        ValueError: a name PyTorch does not know, or a GPU that this machine does not have.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device '{device}' is not a device name: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device} was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise InputError(f"--device {device}: lateral runs on cpu or cuda")
    return device


def init_distributed(device: torch.device | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; return whether one exists.

    Uses NCCL when the process drives a GPU and gloo otherwise. A no-op when ``WORLD_SIZE`` is unset or 1.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = device is not None and device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    global _joined
    _joined = True
    return True


def joined_process_group() -> bool:
    """Whether :func:`init_distributed` joined a multi-process group in this process (it may be destroyed now)."""
    return _joined


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-item list without a process group)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _reduce_device(device: torch.device | None) -> torch.device:
    """Where a collective's tensor must live: NCCL reduces only CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return (
            device
            if device is not None and device.type == "cuda"
            else torch.device("cuda", torch.cuda.current_device())
        )
    return torch.device("cpu")


def all_ranks_true(flag: bool, device: torch.device | None = None) -> bool:
    """Whether ``flag`` holds on every rank (``flag`` itself without a process group).

    Every rank must call it at the same point. Ranks use it to agree on a step that only some of them could take
    (a batch one rank could not read): a rank that skipped a step alone would leave the others waiting forever in
    the gradient all-reduce.
    """
    if not is_distributed():
        return bool(flag)
    box = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_reduce_device(device))
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    return bool(box.item())


@overload
def sum_over_ranks(value: float, device: torch.device | None = None) -> float: ...
@overload
def sum_over_ranks(value: list[float], device: torch.device | None = None) -> list[float]: ...
def sum_over_ranks(value: float | list[float], device: torch.device | None = None) -> float | list[float]:
    """``value`` (a number, or a list of numbers summed element-wise in one all-reduce) summed over all ranks;
    ``value`` itself, as floats, without a process group. Every rank must call it."""
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    if is_distributed():
        box = torch.tensor(values, dtype=torch.float64, device=_reduce_device(device))
        dist.all_reduce(box, op=dist.ReduceOp.SUM)
        values = box.tolist()
    return values if isinstance(value, (list, tuple)) else values[0]


class InferenceSampler(torch.utils.data.Sampler):
    """Contiguous, unpadded shards of the dataset, one per rank, so that gathered results hold each sample once.

    (``DistributedSampler`` pads the last shard by repeating samples, which would count them twice.)
    """

    def __init__(self, dataset_size: int, num_replicas: int | None = None, rank_id: int | None = None):
        self.dataset_size = dataset_size
        num_replicas = world_size() if num_replicas is None else num_replicas
        rank_id = rank() if rank_id is None else rank_id
        per_rank = (dataset_size + num_replicas - 1) // num_replicas
        self.start = min(rank_id * per_rank, dataset_size)
        self.stop = min(self.start + per_rank, dataset_size)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank ``src``'s buffers (BatchNorm running statistics), in place.

    Under DDP each rank's BatchNorm layers track statistics of that rank's batches, so after training the ranks
    hold different running means and variances. Checkpoints are written from rank 0; evaluating every shard with
    rank 0's statistics makes the gathered metrics those of the checkpoint.
    """
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def average_buffers(module: torch.nn.Module) -> None:
    """Replace every floating-point buffer by its mean over the ranks (precise BatchNorm over all ranks' data)."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM)
            buffer.data /= world_size()


def cleanup() -> None:
    """Leave the process group: wait for every rank, free what still refers to it, then destroy it.

    The barrier keeps a fast rank from closing its connections while a slow one is still writing results; the
    garbage collection destroys DDP reducers (which hold the group) now rather than during interpreter shutdown,
    where gloo's threads abort the process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


def object_size(obj: Any) -> int:
    """Bytes an object takes when gathered (for logging how much evaluation moves between ranks)."""
    return len(pickle.dumps(obj))


def exit_worker(code: int = 0) -> NoReturn:
    """End a ``torchrun`` worker now, without the interpreter's teardown; call after :func:`cleanup`.

    gloo's C++ threads can abort a finished worker during interpreter teardown (SIGABRT, "terminate called without
    an active exception"), and torchrun then reports the whole job as failed although every result was written.
    The test suite's two-rank run hit it once in about 30 CI runs (72 runs here did not reproduce it). Python's
    streams and logging are flushed first; files the run wrote are already closed (checkpoints are fsynced).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to save
            pass
    logging.shutdown()
    os._exit(code)
