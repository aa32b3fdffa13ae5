"""Suite-wide settings."""

import os

# the inference commands tune the process's malloc (lateral.heap); tests call them in-process, and the test process
# should keep glibc's defaults. tests/test_heap.py checks the tuning in subprocesses of its own.
os.environ.setdefault("LATERAL_KEEP_HEAP", "0")
