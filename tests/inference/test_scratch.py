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


def test_a_buffer_made_under_inference_mode_is_writable_outside_it():
    with torch.inference_mode():
        first = scratch("test.inference_mode", (16,))
        first.zero_()
    assert not first.is_inference()
    scratch("test.inference_mode", (16,)).fill_(1.0)  # an inference tensor would refuse this in-place write


def test_fpn_copy_runs_inside_and_outside_inference_mode():
    import lateral
    from lateral.inference.winograd import WinogradConv
    from lateral.models.fpn import ResNetFPN

    torch.manual_seed(0)
    model = ResNetFPN(depth=18).eval()
    fast = lateral.optimize(model)
    for conv in fast.modules():
        if isinstance(conv, WinogradConv):
            conv.mode = "f4x4"  # the route that fills scratch buffers in place
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference = model(x)
    with torch.inference_mode():
        first = fast(x)
    second = fast(x)
    for name, level in reference.items():
        scale = level.abs().max()
        assert (first[name] - level).abs().max() <= 1e-4 * scale
        assert torch.equal(first[name], second[name])
