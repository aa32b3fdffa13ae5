"""lateral.heap: glibc keeps freed memory when asked, and the inference commands ask."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from lateral.heap import keep_freed_memory
applied = keep_freed_memory()
# with M_MMAP_MAX = 0 a 64 MB block comes from the heap: mallinfo2's hblkhd (bytes in mmap'ed blocks) stays 0
class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd
libc.free(block)
print(applied, mapped >= 64 << 20)
"""


def run_probe(keep_heap: str) -> list[str]:
    env = {**os.environ, "LATERAL_KEEP_HEAP": keep_heap}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 (glibc >= 2.33)
    except (OSError, AttributeError):
        pytest.skip("needs glibc's mallinfo2")
    assert run_probe("1") == ["True", "False"]  # applied; the 64 MB block is not mmap'ed
    assert run_probe("0") == ["False", "True"]  # opted out: glibc's default mmap's it


def test_inference_commands_tune_the_heap(monkeypatch):
    from lateral import cli, heap

    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1) or True)
    parser_args = {
        "predict": ["predict", "missing.py", "missing.pth", "missing.mp4"],
        "summary": ["summary", "missing.py"],
    }
    for name, argv in parser_args.items():
        calls.clear()
        assert cli.main(argv) != 0  # the files do not exist: the command fails after the tuning step
        assert calls == ([1] if name == "predict" else []), name
