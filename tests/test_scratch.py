"""Per-thread scratch buffers of the inference copy (lateral.inference.scratch)."""

import threading

import torch

from lateral.inference.scratch import scratch


def test_same_name_shares_memory_and_grows():
    first = scratch("test.shared", (2, 3))
    again = scratch("test.shared", (6,))
    assert again.data_ptr() == first.data_ptr() and again.shape == (6,)
    grown = scratch("test.shared", (4, 5))
    assert grown.shape == (4, 5) and grown.is_contiguous()
    assert scratch("test.shared", (2, 3)).data_ptr() == grown.data_ptr()  # never shrinks back to a new buffer


def test_dtypes_and_threads_get_their_own_buffers():
    fp32 = scratch("test.own", (8,))
    bf16 = scratch("test.own", (8,), torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.data_ptr() != fp32.data_ptr()
    seen = []
    worker = threading.Thread(target=lambda: seen.append(scratch("test.own", (8,)).data_ptr()))
    worker.start()
    worker.join()
    assert seen and seen[0] != scratch("test.own", (8,)).data_ptr()
