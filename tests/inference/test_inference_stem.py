"""Folded stem convs and gathered lateral convs of the inference copy (lateral.inference.stem, OneDnnConv).

Every folded or gathered path is compared with ``F.conv3d`` (+ ReLU, + max-pool) in float32, where the results must
agree to rounding: the index arithmetic (temporal padding, clips whose length is not a multiple of the fold, strided
input views) is what these tests pin down. bf16 is checked for closeness only where the CPU runs it natively.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lateral
from lateral.inference.optimization import OneDnnConv, bf16_supported
from lateral.inference.stem import FoldedStemConv, stem_fold_for

ATOL = RTOL = 1e-4
needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="no native bf16 on this CPU")


def stem_conv(in_channels: int = 3, out_channels: int = 8, kernel=(5, 7, 7), padding=(2, 3, 3), seed: int = 0):
    torch.manual_seed(seed)
    conv = nn.Conv3d(in_channels, out_channels, kernel, stride=(1, 2, 2), padding=padding).eval()
    with torch.no_grad():
        conv.bias.normal_()
    return conv


def reference(conv: nn.Conv3d, x: torch.Tensor, pool: nn.MaxPool3d | None = None) -> torch.Tensor:
    out = F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding).relu()
    return out if pool is None else pool(out)


def clip(frames: int, size: int = 20, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "mode,fold,stacking",
    [
        ("3d", 2, None),
        ("3d", 4, None),
        ("2d", 1, None),
        ("2d", 3, "matmul"),
        ("2d", 4, "matmul"),
        ("2d", 3, "copies"),
        ("2d", 4, "copies"),
    ],
)
@pytest.mark.parametrize("frames", [8, 7, 3])
def test_folded_stem_equals_the_plain_conv(mode, fold, stacking, frames, monkeypatch):
    from lateral.inference import stem as stem_module

    if stacking == "copies":  # the path of clips with more than MATMUL_STACK_MAX_PLANES planes (and of G = 1)
        monkeypatch.setattr(stem_module, "MATMUL_STACK_MAX_PLANES", 0)
    conv = stem_conv()
    stem = FoldedStemConv(OneDnnConv(conv, relu=True), mode, fold)
    x = clip(frames, batch=2)
    with torch.no_grad():
        expected = reference(conv, x)
        for given in (x, x.contiguous(memory_format=torch.channels_last_3d)):
            got = stem(given)
            assert got.shape == expected.shape
            assert got.is_contiguous(memory_format=torch.channels_last_3d)
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mode,fold", [("3d", 2), ("2d", 4), ("2d", 1)])
def test_folded_stem_takes_over_the_max_pool_and_reads_strided_views(mode, fold):
    conv = stem_conv(kernel=(3, 7, 7), padding=(1, 3, 3))
    pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
    stem = FoldedStemConv(OneDnnConv(conv, relu=True), mode, fold)
    assert stem.fuse_pool(pool)
    x = clip(16, size=24)[:, :, ::2]  # a non-contiguous view, as SlowFast hands each pathway
    with torch.no_grad():
        torch.testing.assert_close(stem(x), reference(conv, x, pool), atol=ATOL, rtol=RTOL)


def test_pools_that_mix_frames_are_not_taken_over():
    stem = FoldedStemConv(OneDnnConv(stem_conv(), relu=True), "3d", 2)
    assert not stem.fuse_pool(nn.MaxPool3d((3, 3, 3), (1, 2, 2), (1, 1, 1)))
    assert not stem.fuse_pool(nn.MaxPool3d((1, 3, 3), (2, 2, 2), (0, 1, 1)))
    assert stem.pool is None


def test_folded_weight_follows_weight_changes_and_is_not_state():
    conv = stem_conv()
    stem = FoldedStemConv(OneDnnConv(conv, relu=True), "2d", 4)
    x = clip(8)
    with torch.no_grad():
        stem(x)
        assert list(stem.state_dict()) == ["weight", "bias"]
        other = stem_conv(seed=5)
        stem.load_state_dict({"weight": other.weight, "bias": other.bias})
        torch.testing.assert_close(stem(x), reference(other, x), atol=ATOL, rtol=RTOL)
    clone = copy.deepcopy(stem)
    assert clone._folded == {}
    with torch.no_grad():
        torch.testing.assert_close(clone(x), stem(x), atol=0, rtol=0)


def test_which_convs_count_as_stems():
    def one_dnn(conv: nn.Module) -> OneDnnConv:
        return OneDnnConv(conv)

    assert stem_fold_for(one_dnn(stem_conv()), torch.float32) == ("3d", 2)
    assert stem_fold_for(one_dnn(stem_conv()), torch.bfloat16) == ("2d", 4)
    assert stem_fold_for(one_dnn(stem_conv(kernel=(1, 7, 7), padding=(0, 3, 3))), torch.bfloat16) == ("2d", 1)
    assert stem_fold_for(one_dnn(nn.Conv3d(64, 64, (3, 1, 1))), torch.float32) is None  # not a stem: 64 channels
    assert stem_fold_for(one_dnn(nn.Conv3d(3, 8, (5, 7, 7), stride=(2, 2, 2))), torch.float32) is None
    assert stem_fold_for(one_dnn(nn.Conv2d(3, 8, 7)), torch.float32) is None


def test_optimize_folds_slowfast_stems_and_keeps_the_state_dict():
    from test_export import randomise_norms, thin_config

    torch.manual_seed(0)
    model = randomise_norms(lateral.build_model(thin_config())).eval()
    opt = lateral.optimize(model)
    backbone = opt.backbone.module
    for pathway in (backbone.slow_path, backbone.fast_path):
        assert isinstance(pathway.conv1.conv, FoldedStemConv)
        assert isinstance(pathway.maxpool, nn.Identity)  # pooled inside the stem
    assert backbone.fast_path.conv1.conv.fold == 2
    assert not opt.backbone.convert_input  # the stems read the caller's clip as it is
    stem_keys = {key for key in opt.state_dict() if ".conv1." in key and ".layer" not in key}
    assert stem_keys == {
        f"backbone.module.{p}_path.conv1.conv.{n}" for p in ("slow", "fast") for n in ("weight", "bias")
    }
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model(x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("frames", [32, 30, 7])
def test_gathered_lateral_conv_equals_the_strided_conv(frames):
    torch.manual_seed(0)
    conv = nn.Conv3d(8, 16, (5, 1, 1), stride=(8, 1, 1), padding=(2, 0, 0)).eval()
    lateral_conv = OneDnnConv(conv)
    assert lateral_conv.gather_frames_in_bf16 and not lateral_conv.fp32_in_bf16
    x = torch.randn(2, 8, frames, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        torch.testing.assert_close(lateral_conv._forward_gathered(x), conv(x), atol=ATOL, rtol=RTOL)
    spatially_unsafe = OneDnnConv(nn.Conv3d(8, 16, (5, 3, 3), stride=(8, 4, 4)))
    assert spatially_unsafe.fp32_in_bf16 and not spatially_unsafe.gather_frames_in_bf16


@needs_bf16
def test_bf16_stem_and_lateral_are_close_to_fp32():
    conv = stem_conv()
    stem = FoldedStemConv(OneDnnConv(copy.deepcopy(conv), relu=True), "2d", 4).to(torch.bfloat16)
    x = clip(8)
    with torch.no_grad():
        got = stem(x)  # float32 input: the stem casts while it stacks frames
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), reference(conv, x), atol=5e-2, rtol=2e-2)
        lateral_fp32 = nn.Conv3d(8, 16, (5, 1, 1), stride=(8, 1, 1), padding=(2, 0, 0)).eval()
        lateral_bf16 = OneDnnConv(copy.deepcopy(lateral_fp32)).to(torch.bfloat16)
        y = torch.randn(1, 8, 32, 14, 14)
        out = lateral_bf16(y.bfloat16().contiguous(memory_format=torch.channels_last_3d))
        assert torch.isfinite(out.float()).all()
        torch.testing.assert_close(out.float(), lateral_fp32(y), atol=5e-2, rtol=2e-2)


def test_stem_with_two_routes_times_them_once_per_size_and_matches_the_plain_conv():
    from lateral.inference.stem import stem_routes_for
    from lateral.inference.winograd import size_class

    conv = stem_conv()
    routes = stem_routes_for(OneDnnConv(conv), torch.float32)
    assert routes == [("3d", 2), ("2d", 4)]
    assert stem_routes_for(OneDnnConv(conv), torch.bfloat16) == [("2d", 4), ("3d", 2)]
    assert stem_routes_for(OneDnnConv(stem_conv(kernel=(1, 7, 7), padding=(0, 3, 3))), torch.float32) == [("3d", 1)]
    stem = FoldedStemConv(OneDnnConv(conv, relu=True), *routes[0], routes=routes)
    calls = []
    original = stem._run
    stem._run = lambda x, route: calls.append(route) or original(x, route)
    x = clip(8, batch=2)
    with torch.no_grad():
        expected = reference(conv, x)
        torch.testing.assert_close(stem(x), expected, atol=ATOL, rtol=RTOL)
        assert set(calls[:-1]) == set(routes) and len(calls) == 2 * 3 + 1  # three timed rounds, then the call
        chosen = stem.routes_chosen[size_class(x)]
        assert chosen in routes and (stem.mode, stem.fold) == chosen
        calls.clear()
        torch.testing.assert_close(stem(x), expected, atol=ATOL, rtol=RTOL)
        assert calls == [chosen]  # measured once per size class
        for route in routes:  # each route on its own gives the plain conv
            torch.testing.assert_close(original(x, route), expected, atol=ATOL, rtol=RTOL)


def test_fastest_route_keeps_the_default_unless_another_is_clearly_faster():
    import time

    from lateral.inference.winograd import fastest_route

    delays = {"direct": 0.004, "f2x2": 0.0, "f4x4": 0.002}
    assert fastest_route(list(delays), lambda route: time.sleep(delays[route])) == "f2x2"
    delays = {"direct": 0.0, "f2x2": 0.004}
    assert fastest_route(list(delays), lambda route: time.sleep(delays[route])) == "direct"
    assert fastest_route(["only"], lambda route: None) == "only"


def test_threads_with_clips_of_different_size_classes_keep_their_own_routes():
    """One copy called from several threads: each call runs the route chosen for its own clip's size class."""
    import threading

    from lateral.inference.winograd import size_class

    conv = stem_conv()
    stem = FoldedStemConv(OneDnnConv(conv, relu=True), "3d", 2, routes=[("3d", 2), ("2d", 4)])
    clips = [clip(8, size=20), clip(16, size=36, batch=2)]
    stem.routes_chosen = {size_class(clips[0]): ("3d", 2), size_class(clips[1]): ("2d", 4)}  # as if measured
    expected = [reference(conv, x) for x in clips]
    failures = []

    def work(index: int) -> None:
        for _ in range(40):
            try:
                with torch.no_grad():
                    got = stem(clips[index])
                if got.shape != expected[index].shape or not torch.allclose(got, expected[index], atol=ATOL, rtol=RTOL):
                    failures.append("wrong result")
            except RuntimeError as err:
                failures.append(str(err).splitlines()[0])

    threads = [threading.Thread(target=work, args=(i % 2,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
