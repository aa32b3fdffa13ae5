"""Per-thread scratch memory for the inference copy's intermediate buffers.

Buffers above glibc's mmap threshold (32 MB at most) are returned to the kernel when freed, so a fresh one is
page-faulted in, zeroed page by page, on every call: for SlowFast's 19 MB bf16 stem stack that took longer than
the copy that fills it. Buffers that never leave a module (its output is a fresh tensor) are therefore kept here,
one per name and thread, grown when a larger one is needed and never shrunk.
"""

from __future__ import annotations

import math
import threading

import torch

__all__ = ["scratch"]

_buffers = threading.local()


def scratch(name: str, shape: tuple[int, ...] | list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` for this thread, sharing memory with earlier calls for the
    same ``name`` and dtype: the caller must be done with the previous contents."""
    by_key: dict[tuple[str, torch.dtype], torch.Tensor] = _buffers.__dict__.setdefault("by_key", {})
    numel = math.prod(shape)
    buffer = by_key.get((name, dtype))
    if buffer is None or buffer.numel() < numel:
        # a normal tensor even when first asked for under torch.inference_mode: an inference tensor could not be
        # written to by a later call outside that mode
        with torch.inference_mode(False):
            buffer = by_key[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buffer[:numel].view(shape)
