"""Keep freed memory in the process heap, so that large tensors are not page-faulted in again on every allocation.

glibc serves each allocation above its mmap threshold (which grows with use, to at most 32 MB) with fresh pages from
the kernel and hands them back on free, so every such tensor pays a page fault per 4 KB page when it is first
written. FPN-50 at 800x1216 allocates many 62 MB maps per image, and its forward ran up to a quarter faster with
freed memory kept in the heap (figures: benchmarks/README.md, 'Measurements behind the code').
Clip-sized SlowFast tensors (at most 13 MB) are below the threshold and see no change.

``keep_freed_memory()`` sets glibc's ``M_MMAP_MAX`` to 0 (every allocation comes from the heap) and
``M_TRIM_THRESHOLD`` to its maximum (freed memory is not returned to the kernel), so the process keeps its peak
memory until it exits. The inference commands (``predict``, ``test``, ``detect predict``, ``detect test``) call it;
``LATERAL_KEEP_HEAP=0`` turns it off. Elsewhere (non-glibc C libraries, other systems) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); return whether the setting took effect."""
    if not sys.platform.startswith("linux") or os.environ.get("LATERAL_KEEP_HEAP", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
