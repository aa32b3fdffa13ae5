"""lateral.optimize (BN folding, channels-last, bf16, torch.compile), ONNX / TorchScript export and the CLI.

Parity is checked on the golden SlowFast / SlowOnly cases (synthesised weights, fixed inputs) and on a thin
SlowFast (base_channels 16 / 2) whose BatchNorm statistics are randomised, so that folding is not a no-op.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import lateral
from golden import GoldenCase
from lateral.cli import main as cli_main
from lateral.cli.export import how_to_run_fastest
from lateral.config import ConfigError
from lateral.inference import optimization as optimize_module
from lateral.inference.exporters import check_export, export_onnx, export_torchscript
from lateral.inference.optimization import OneDnnConv, PrecisionError, bf16_supported, compile_available, fold_batchnorm
from lateral.inference.timing import BenchmarkResult, Variant, count_macs, flop_counter_macs, parse_input_shape

HERE = Path(__file__).resolve().parent
GOLDEN_RECOGNIZERS = ["slowfast_r50_4x16_seed", "slowfast_r50_8x8", "slowonly_r50_8x8", "slowfast_r50_multiview"]
THIN_INPUT = (1, 3, 8, 32, 32)
ATOL = RTOL = 1e-4

try:
    import onnxruntime  # noqa: F401

    HAVE_ORT = True
except ImportError:
    HAVE_ORT = False
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed (pip install 'lateral-vision[onnx]')")


def thin_config(num_classes: int = 10, depth: int = 50) -> dict:
    """A SlowFast with 1/4 of the slow channels (16) and fast base 2: the real blocks at a tiny cost."""
    expansion = 4 if depth >= 50 else 1
    return {
        "type": "Recognizer3D",
        "backbone": {
            "type": "ResNet3dSlowFast",
            "resample_rate": 4,
            "speed_ratio": 4,
            "channel_ratio": 8,
            "slow_pathway": {
                "type": "resnet3d",
                "depth": depth,
                "lateral": True,
                "base_channels": 16,
                "conv1_kernel": (1, 7, 7),
                "conv1_stride_t": 1,
                "pool1_stride_t": 1,
                "inflate": (0, 0, 1, 1),
            },
            "fast_pathway": {
                "type": "resnet3d",
                "depth": depth,
                "lateral": False,
                "base_channels": 2,
                "conv1_kernel": (5, 7, 7),
                "conv1_stride_t": 1,
                "pool1_stride_t": 1,
            },
        },
        "cls_head": {"type": "SlowFastHead", "in_channels": (16 + 2) * 8 * expansion, "num_classes": num_classes},
        "test_cfg": {"average_clips": "prob"},
    }


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (the init has mean 0, var 1, beta 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(size, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(size, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(size, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small inputs gain nothing from a second thread, and on a loaded machine every op's barrier waits for the
    other thread's time slice: one thread keeps this file fast and its timing stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def thin_model() -> nn.Module:
    torch.manual_seed(0)
    return randomise_norms(lateral.build_model(thin_config())).eval()


def thin_input(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, *THIN_INPUT[1:]), generator=torch.Generator().manual_seed(seed))


def golden_model(name: str) -> tuple[nn.Module, GoldenCase]:
    case = GoldenCase(name)
    model = lateral.build_model(case.config)
    model.load_state_dict(case.state_dict())
    return model.eval(), case


def count_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ----------------------------------------------------------------------------------------------- optimize


def test_optimize_leaves_the_original_untouched(thin_model):
    thin_model.train()
    before = {k: v.clone() for k, v in thin_model.state_dict().items()}
    norms = count_norms(thin_model)
    opt = lateral.optimize(thin_model)
    assert thin_model.training, "optimize must not switch the original to eval mode"
    thin_model.eval()
    after = thin_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert count_norms(thin_model) == norms > 0
    assert not thin_model.backbone.slow_path.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)

    assert count_norms(opt) == 0, "every BatchNorm of the SlowFast should be folded"
    assert not opt.training
    assert all(not p.requires_grad for p in opt.parameters())
    block = opt.backbone.module.slow_path.layer1[0]
    conv = block.conv1.conv
    assert conv.bias is not None and conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    if torch.backends.mkldnn.is_available():  # every conv runs oneDNN directly, ReLU fused where it follows
        assert isinstance(conv, OneDnnConv) and conv.relu and block.conv1.activate is None
        assert isinstance(block.conv3.conv, OneDnnConv) and not block.conv3.conv.relu
        assert not any(isinstance(m, nn.Conv3d) for m in opt.modules())


def test_fused_fp32_matches_eager_with_nontrivial_norms(thin_model):
    x = thin_input(batch=2)
    opt = lateral.optimize(thin_model)
    with torch.no_grad():
        expected = thin_model(x)
        got = opt(x)
    assert got.dtype == torch.float32 and got.shape == (2, 10)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    # the folding is not a no-op: dropping the folded biases changes the result
    for module in opt.backbone.modules():
        if isinstance(module, (nn.Conv3d, OneDnnConv)) and module.bias is not None:
            module.bias.data.zero_()
    with torch.no_grad():
        assert not torch.allclose(opt(x), expected, atol=1e-2)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN convs need mkldnn")
def test_residual_blocks_fuse_add_and_relu_into_the_last_conv(thin_model):
    from lateral.inference.optimization import FusedResidualBlock
    from lateral.models.resnet3d import BasicBlock3d, Bottleneck3d

    opt = lateral.optimize(thin_model)
    blocks = [m for m in thin_model.backbone.modules() if isinstance(m, (BasicBlock3d, Bottleneck3d))]
    fused = [m for m in opt.backbone.modules() if isinstance(m, FusedResidualBlock)]
    assert len(fused) == len(blocks) > 0
    assert not any(isinstance(m, (BasicBlock3d, Bottleneck3d)) for m in opt.backbone.modules())
    # the children keep their names: the copy's state dict is the eager one without the BN tensors
    eager_names = {k for k in thin_model.backbone.state_dict() if ".bn." not in k and "downsample.bn" not in k}
    opt_names = set(opt.backbone.module.state_dict())
    assert opt_names == eager_names | {
        k.replace(".conv.weight", ".conv.bias") for k in eager_names if k.endswith(".conv.weight")
    }
    # the shortcut tensor is read, never written: a block given the same input twice answers the same
    block = fused[0]
    x = torch.randn(1, block.conv1.conv.in_channels, 2, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    kept = x.clone()
    with torch.no_grad():
        first, second = block(x), block(x)
    assert torch.equal(x, kept) and torch.equal(first, second)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN convs need mkldnn")
def test_residual_output_reuses_only_memory_nothing_else_reads(thin_model):
    from lateral.inference.optimization import FusedResidualBlock

    opt = lateral.optimize(thin_model)
    layer = opt.backbone.module.slow_path.layer1
    assert [block.private_input for block in layer] == [False] + [True] * (len(layer) - 1)
    identity_block = layer[1]  # input = the previous block's output, read by nothing else
    assert isinstance(identity_block, FusedResidualBlock) and identity_block.downsample is None
    x = torch.randn(1, identity_block.conv1.conv.in_channels, 2, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        identity_block.private_input = False
        expected = identity_block(x)
        identity_block.private_input = True
        got = identity_block(x.clone())
        first_input = torch.randn(1, layer[0].conv1.conv.in_channels, 2, 6, 6).contiguous(
            memory_format=torch.channels_last_3d
        )
        kept_first = first_input.clone()
        layer[0](first_input)  # shortcut projected by the downsample conv: written into, the input untouched
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert torch.equal(first_input, kept_first) and got.data_ptr() != x.data_ptr()
    with torch.no_grad():
        kept = x.clone()
        again = identity_block(x)
    assert again.data_ptr() == x.data_ptr(), "the output was not written into the private input"
    assert not torch.equal(x, kept)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN convs need mkldnn")
def test_packed_weights_follow_the_input_shape_and_survive_copies(thin_model):
    import copy

    opt = lateral.optimize(thin_model)
    conv = opt.backbone.module.slow_path.layer1[0].conv1.conv
    outputs = {}
    for batch, size in ((1, 32), (2, 40), (1, 32)):
        x = thin_input(batch=batch)
        x = torch.nn.functional.interpolate(x.flatten(1, 2), size=(size, size)).unflatten(1, x.shape[1:3])
        with torch.no_grad():
            expected, got = thin_model(x), opt(x)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
        assert conv._packed is not None and conv._packed[1].is_mkldnn
        assert conv._packed[0][0][0] == batch  # repacked for the new shape
        outputs[(batch, size)] = got
    assert "_packed" not in "".join(opt.state_dict())  # the packed copy is a cache, not state
    clone = copy.deepcopy(opt)
    assert clone.backbone.module.slow_path.layer1[0].conv1.conv._packed is None  # rebuilt on the clone's first call
    x = thin_input(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), opt(x), atol=0, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_copy_follows_load_state_dict_for_shapes_it_has_run(precision):
    """Packed, Winograd-transformed and folded stem weights are caches of the weights: loading other weights into a
    copy that has already run an input shape must not leave that shape on the old ones."""
    from lateral.inference.winograd import WinogradConv
    from lateral.models.fpn import ResNetFPN

    if precision == "bf16" and not bf16_supported():
        pytest.skip("no native bf16 on this CPU")

    def fpn(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return ResNetFPN(depth=18).eval()

    def slowfast(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return randomise_norms(lateral.build_model(thin_config()), seed=seed).eval()

    cases = [(fpn(1), fpn(2), torch.randn(1, 3, 64, 96)), (slowfast(1), slowfast(2), thin_input())]
    for model_a, model_b, x in cases:
        fast_a, fast_b = lateral.optimize(model_a, precision), lateral.optimize(model_b, precision)
        for conv in fast_a.modules():
            if isinstance(conv, WinogradConv) and precision == "fp32":
                conv.mode = conv.ROUTES[-1]  # a Winograd route, whose transformed weight is cached too
        with torch.no_grad():
            before = fast_a(x)
            fast_a.load_state_dict(fast_b.state_dict())
            after, wanted = fast_a(x), fast_b(x)
        if isinstance(wanted, dict):
            before, after, wanted = (list(out.values())[0] for out in (before, after, wanted))
        tolerance = 2e-2 if precision == "bf16" else 1e-4
        assert (before - wanted).abs().max() > 0.1 * wanted.abs().max()  # the two models differ
        assert (after - wanted).abs().max() <= tolerance * wanted.abs().max()


def test_torch_save_of_an_inference_copy(thin_model):
    """torch.save pickles with protocol 2, where a torch.memory_format alone does not pickle."""
    import io

    opt = lateral.optimize(thin_model)
    x = thin_input()
    with torch.no_grad():
        expected = opt(x)
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # a whole module: only for files one wrote oneself
    assert loaded.backbone.memory_format == torch.channels_last_3d
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, atol=0, rtol=0)


def test_torchvision_blocks_fuse_in_the_fpn_copy():
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from lateral.inference.optimization import FusedResidualBlock
    from lateral.models.fpn import ResNetFPN

    torch.manual_seed(0)
    model = randomise_norms(ResNetFPN(depth=50, style="torchvision")).eval()
    x = torch.randn(1, 3, 64, 96)
    opt = lateral.optimize(model)
    if torch.backends.mkldnn.is_available():
        assert sum(isinstance(m, FusedResidualBlock) for m in opt.modules()) == 16
        assert not any(isinstance(m, (BasicBlock, Bottleneck)) for m in opt.modules())
    with torch.no_grad():
        expected, got = model(x), opt(x)
    for key in expected:  # random norms through 16 blocks give outputs up to ~130: compare relative to the scale
        scale = float(expected[key].abs().max())
        assert float((got[key] - expected[key]).abs().max()) <= 1e-5 * scale, key


def test_fold_batchnorm_in_sequential_and_torchvision_block():
    from torchvision.models.resnet import Bottleneck
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    block = randomise_norms(Bottleneck(32, 8)).eval()
    frozen = FrozenBatchNorm2d(16)
    frozen.running_var.uniform_(0.5, 1.5)
    frozen.weight.uniform_(0.5, 1.5)
    frozen.bias.normal_()
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), frozen, nn.ReLU()).eval()
    for module, x in ((block, torch.randn(2, 32, 9, 9)), (stem, torch.randn(2, 3, 9, 9))):
        with torch.no_grad():
            expected = module(x)
            folded = module  # fold_batchnorm works in place
            count = fold_batchnorm(folded)
            got = folded(x)
        assert count == (3 if module is block else 1)
        assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in folded.modules())
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train())


@pytest.mark.parametrize("route", ["f2x2", "f4x4", "direct"])
@pytest.mark.parametrize("name", GOLDEN_RECOGNIZERS)
def test_fused_fp32_golden_parity(name, route):
    # the stored outputs are the eager model's (tests/models check that), so eager is not rerun here
    from lateral.inference.temporal_winograd import TemporalWinogradConv
    from lateral.inference.winograd import WinogradConv

    model, case = golden_model(name)
    opt = lateral.optimize(model)
    temporal_route = {"f2x2": "f2", "f4x4": "f4", "direct": "direct"}[route]  # F(2, 3) / F(4, 3) over time
    for conv in opt.modules():
        if isinstance(conv, TemporalWinogradConv):
            conv.mode = temporal_route
        elif isinstance(conv, WinogradConv):  # every route, not only the one this machine measures faster
            conv.mode = route
    if "slowfast_r50" in name:  # the slow pathway's res4 / res5 3x1x1 convs
        assert sum(isinstance(conv, TemporalWinogradConv) for conv in opt.modules()) == 9
    x = case.input()
    with torch.no_grad():
        if x.dim() == 6:  # multi-view: predict on the copy still averages the views
            torch.testing.assert_close(opt.predict(x), case.expected["average_prob"], atol=ATOL, rtol=RTOL)
        else:
            torch.testing.assert_close(opt(x), case.expected["logits"], atol=ATOL, rtol=RTOL)


def _bf16_cases():
    """Every golden case on a CPU with native bf16; elsewhere the kernels are emulated (~30 s per case on a busy
    2-core machine), so only the seed case runs, as a slow test, unless LATERAL_TEST_BF16_ALL=1."""
    if bf16_supported("cpu") or os.environ.get("LATERAL_TEST_BF16_ALL") == "1":
        return GOLDEN_RECOGNIZERS
    skip = pytest.mark.skip(reason="no native bf16 on this CPU: emulated bf16 is too slow for every golden case")
    return [
        pytest.param(name, marks=pytest.mark.slow if name == "slowfast_r50_4x16_seed" else skip)
        for name in GOLDEN_RECOGNIZERS
    ]


@pytest.mark.parametrize("name", _bf16_cases())
def test_bf16_golden_keeps_top1(name):
    model, case = golden_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "no native bf16" warning on such CPUs
        opt = lateral.optimize(model, precision="bf16")
    x = case.input()
    expected = case.expected["logits"] if x.dim() == 5 else case.expected["clip_logits"]
    if x.dim() == 6:
        x = x.reshape(-1, *x.shape[2:])  # every view is a clip of its own here
    with torch.no_grad():
        got = opt(x)
    assert got.dtype == torch.float32
    assert torch.equal(got.argmax(dim=1), expected.reshape(got.shape).argmax(dim=1))
    assert (got.softmax(dim=1) - expected.reshape(got.shape).softmax(dim=1)).abs().max().item() <= 1e-2


def test_bf16_copy_layout_and_closeness(thin_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = lateral.optimize(thin_model, precision="bf16")
    conv = opt.backbone.module.slow_path.conv1.conv
    assert conv.weight.dtype == torch.bfloat16
    assert opt.cls_head.fc_cls.weight.dtype == torch.float32, "the classifier stays fp32"
    x = thin_input()
    with torch.no_grad():
        expected, got = thin_model(x), opt(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)
    assert not torch.equal(got, expected), "a bf16 run that equals fp32 bit for bit did not run in bf16"


def test_optimized_copy_predicts_multi_view_and_refuses_training(thin_model):
    opt = lateral.optimize(thin_model)
    clips = torch.randn(2, 3, *THIN_INPUT[1:], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(opt.predict(clips), thin_model.predict(clips), atol=ATOL, rtol=RTOL)
    assert opt.in_channels == 3  # backbone attributes stay reachable through the wrapper
    assert not any(module.training for module in opt.modules())
    with pytest.raises(RuntimeError, match="cannot be trained"):
        opt.train()
    assert not any(module.training for module in opt.modules())  # refused before any flag was switched
    assert opt.eval() is opt and opt.train(False) is opt
    with pytest.raises(RuntimeError, match="cannot be trained"):
        copy.deepcopy(opt).train()
    for part in (opt.cls_head, opt.backbone.module):  # a part of the copy: its dropout would come back on
        with pytest.raises(RuntimeError, match="cannot be trained"):
            part.train()
    with pytest.raises(RuntimeError, match="cannot be trained"):
        opt.apply(lambda module: module.train())
    assert not any(module.training for module in opt.modules())
    with pytest.raises(ValueError, match="predict"):
        opt(clips)  # 6-D input: the model's own message about the layout


def test_precision_errors_and_fallback(thin_model, monkeypatch):
    with pytest.raises(PrecisionError, match="fp16"):
        lateral.optimize(thin_model, precision="fp16")
    monkeypatch.setattr(optimize_module, "bf16_supported", lambda device="cpu": False)
    with pytest.raises(PrecisionError, match="no native bf16"):
        optimize_module.optimize(thin_model, precision="bf16", on_unsupported="error")
    with pytest.warns(UserWarning, match="falling back to fp32"):
        opt = optimize_module.optimize(thin_model, precision="bf16", on_unsupported="fp32")
    assert opt.backbone.module.slow_path.conv1.conv.weight.dtype == torch.float32
    with pytest.warns(UserWarning, match="running bf16 anyway"):
        opt = lateral.optimize(thin_model, precision="bf16")
    assert opt.backbone.module.slow_path.conv1.conv.weight.dtype == torch.bfloat16


def test_optimize_fpn_backbone():
    from lateral.models.fpn import ResNetFPN

    torch.manual_seed(0)
    model = randomise_norms(ResNetFPN(depth=18, style="seed")).eval()
    x = torch.randn(1, 3, 64, 96)
    opt = lateral.optimize(model)
    assert count_norms(opt) == 0
    assert opt.module.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = model(x), opt(x)
    assert list(got) == ["p2", "p3", "p4", "p5"]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=ATOL, rtol=RTOL)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN convs need mkldnn")
def test_fpn_laterals_add_the_top_down_map_inside_the_conv():
    from lateral.inference.optimization import FusedFeaturePyramid, OneDnnConv
    from lateral.models.fpn import ResNetFPN

    torch.manual_seed(0)
    model = randomise_norms(ResNetFPN(depth=18, style="torchvision")).eval()
    opt = lateral.optimize(model)
    assert isinstance(opt.module.fpn, FusedFeaturePyramid)
    assert set(opt.module.fpn.state_dict()) == {  # the pyramid's own names: BN-free FPN convs keep their biases
        k for k in model.fpn.state_dict() if "inner_blocks" in k or "layer_blocks" in k
    }
    x = torch.randn(2, 3, 70, 98)  # odd map sizes: the upsampled map is sized to each lateral
    with torch.no_grad():
        expected, got = model(x), opt(x)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], atol=ATOL, rtol=RTOL)
        conv = OneDnnConv(nn.Conv2d(4, 4, 1), relu=True)
        with pytest.raises(ValueError, match="fused ReLU"):
            conv.add(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))


# ----------------------------------------------------------------------------------------------- export


@needs_ort
def test_onnx_golden_seed_dynamic_batch(tmp_path):
    model, case = golden_model("slowfast_r50_4x16_seed")
    x = case.input()
    path = export_onnx(model, tmp_path / "seed.onnx", x)
    from lateral.inference.exporters import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, threads=2)
    torch.testing.assert_close(runner(x)[0], case.expected["logits"], atol=ATOL, rtol=RTOL)
    batch2 = torch.cat([x, torch.randn(x.shape, generator=torch.Generator().manual_seed(5))])
    with torch.no_grad():
        expected = model(batch2)
    got = runner(batch2)[0]
    assert got.shape == (2, 400)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@needs_ort
def test_onnx_export_switches_a_training_model_to_eval(thin_model, tmp_path):
    thin_model.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            path = export_onnx(thin_model, tmp_path / "thin.onnx", thin_input())
        assert thin_model.training, "export must not switch the caller's model"
        result = check_export(thin_model, path, "onnx", [thin_input(), thin_input(batch=3, seed=1)])
    finally:
        thin_model.eval()
    # check_export compares with the eval-mode model: dropout (p=0.8) in the export would break this
    assert result["max_rel_diff"] < 1e-4


def test_export_of_an_inference_copy_says_to_export_the_original(thin_model, tmp_path):
    from lateral.models.fpn import ResNetFPN

    cases = [
        (lateral.optimize(thin_model), thin_input()),
        (lateral.optimize(ResNetFPN(depth=18).eval()), torch.randn(1, 3, 64, 64)),
    ]
    exporters = [export_torchscript] + ([export_onnx] if importlib.util.find_spec("onnx") else [])
    for opt, x in cases:
        for export in exporters:
            with pytest.raises(ValueError, match="inference copy made by lateral.optimize.*export the original"):
                export(opt, tmp_path / "copy.model", x)


@needs_ort
def test_onnx_fpn_outputs(tmp_path):
    from lateral.models.fpn import ResNetFPN

    torch.manual_seed(0)
    model = randomise_norms(ResNetFPN(depth=18, style="torchvision")).eval()
    x = torch.randn(1, 3, 64, 96)
    path = export_onnx(model, tmp_path / "fpn.onnx", x)
    import onnx

    assert [o.name for o in onnx.load(str(path)).graph.output] == ["out_0", "out_1", "out_2", "out_3", "pool"]
    result = check_export(model, path, "onnx", [x, torch.randn(2, 3, 64, 96)])
    assert result["max_abs_diff"] <= ATOL + RTOL * result["max_abs_reference"]


def test_torchscript_roundtrip(thin_model, tmp_path):
    path = export_torchscript(thin_model, tmp_path / "thin.pt", thin_input())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path))
    x = thin_input(batch=2, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), thin_model(x), atol=ATOL, rtol=RTOL)


def test_torchscript_export_of_an_fpn_keeps_its_named_levels(tmp_path):
    from lateral.models.fpn import ResNetFPN

    torch.manual_seed(0)
    fpn = ResNetFPN(depth=18, style="seed").eval()
    path = export_torchscript(fpn, tmp_path / "fpn.pt", torch.randn(1, 3, 64, 96))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        levels, expected = loaded(x), fpn(x)
    assert list(levels) == ["p2", "p3", "p4", "p5"]
    for name in expected:
        torch.testing.assert_close(levels[name], expected[name], atol=1e-4, rtol=1e-4)
    result = check_export(fpn, path, "torchscript", x)  # one tensor is accepted as the inputs
    assert result["max_rel_diff"] < 1e-4


def test_default_export_input_takes_the_clip_length_of_the_test_pipeline(thin_model):
    from lateral.engine.exporting import default_input_shape

    cfg = {"test_pipeline": [dict(type="SampleFrames", clip_len=16, num_clips=1), dict(type="FormatShape")]}
    assert default_input_shape(thin_model, cfg) == (1, 3, 16, 224, 224)
    assert default_input_shape(thin_model, {**cfg, "clip_len": 8}) == (1, 3, 8, 224, 224)
    assert default_input_shape(thin_model, {}) == (1, 3, 32, 224, 224)
    # the config's own input_shape comes first (export, bench and summary read it alike)
    assert default_input_shape(thin_model, {**cfg, "input_shape": [2, 3, 8, 112, 112]}) == (2, 3, 8, 112, 112)
    from lateral.engine.summary import default_input_shape as summary_shape

    assert summary_shape({**cfg, "input_shape": [2, 3, 8, 112, 112]}) == (2, 3, 8, 112, 112)
    with pytest.raises(ConfigError, match="input_shape must be 4 or 5 positive whole numbers"):
        default_input_shape(thin_model, {"input_shape": [1, 3, "32", 224, 224]})


# -------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def thin_files(thin_model, tmp_path_factory):
    from lateral.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("thin")
    config = folder / "thin_slowfast.py"
    config.write_text(f"model = {thin_config()!r}\nclip_len = 8\n")
    checkpoint = folder / "thin.pth"
    save_checkpoint({"state_dict": thin_model.state_dict()}, checkpoint)
    return str(config), str(checkpoint)


def test_cli_export_without_input_takes_the_clips_the_config_was_tested_on(thin_model, tmp_path, capsys):
    from lateral.checkpoint import save_checkpoint

    # a model trained and tested on 56x56 crops: 2 clips x 3 crops of 8 frames per video
    pipeline = [
        dict(type="PyAVInit"),
        dict(type="SampleFrames", clip_len=8, num_clips=2, test_mode=True),
        dict(type="PyAVDecode"),
        dict(type="Resize", scale=(-1, 64)),
        dict(type="ThreeCrop", crop_size=56),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="PackActionInputs"),
    ]
    checkpoint = tmp_path / "small_crops.pth"
    save_checkpoint(
        {
            "state_dict": thin_model.state_dict(),
            "meta": {"config": {"model": thin_config(), "test_pipeline": pipeline}},
        },
        checkpoint,
    )
    assert cli_main(["export", str(checkpoint), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    text = capsys.readouterr().out
    assert (
        "input 6x3x8x56x56 from the config's test pipeline (clip_len 8, 56x56 frames, 2 clips x 3 crops = 6 views "
        "of a video as the batch); --input sets another"
    ) in text
    assert "input 6x3x8x56x56, dynamic batch" in text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.jit.load(str(tmp_path / "m.pt"))
    assert exported(thin_input(batch=2)[..., :56, :56].contiguous()).shape == (2, 10)
    # a fixed-size resize without a crop says the size too; --input overrides and nothing is said about it
    fixed = [dict(type="SampleFrames", clip_len=4, num_clips=1), dict(type="Resize", scale=(48, 40), keep_ratio=False)]
    from lateral.engine.exporting import PipelineClips, config_test_clips

    assert config_test_clips({"test_pipeline": fixed}) == PipelineClips(4, 40, 48, 1, 1)
    assert (
        cli_main(
            [
                "export",
                str(checkpoint),
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "n.pt"),
                "--input",
                "1x3x8x32x32",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "from the config" not in text and "input 1x3x8x32x32, dynamic batch" in text


@needs_ort
def test_cli_export_onnx_check(thin_files, tmp_path, capsys):
    config, checkpoint = thin_files
    out = tmp_path / "thin.onnx"
    rc = cli_main(
        [
            "export",
            config,
            checkpoint,
            "--format",
            "onnx",
            "--out",
            str(out),
            "--check",
            "--input",
            "1x3x8x32x32",
            "--threads",
            "1",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.is_file() and "max abs diff" in text and "OK" in text


def test_cli_export_torchscript_check(thin_files, tmp_path, capsys):
    config, checkpoint = thin_files
    out = tmp_path / "thin.pt"
    rc = cli_main(
        [
            "export",
            config,
            checkpoint,
            "--format",
            "torchscript",
            "--out",
            str(out),
            "--check",
            "--input",
            "1x3x8x32x32",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "max abs diff" in text and "OK" in text


def test_cli_export_without_onnxruntime_names_the_extra(thin_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes "import onnxruntime" fail
    config, checkpoint = thin_files
    rc = cli_main(
        [
            "export",
            config,
            checkpoint,
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
            "--check",
            "--input",
            "1x3x8x32x32",
        ]
    )
    assert rc == 1
    assert "lateral-vision[onnx]" in capsys.readouterr().err


def test_cli_bench_small(thin_files, tmp_path, capsys):
    config, checkpoint = thin_files
    report = tmp_path / "bench.json"
    rc = cli_main(
        [
            "bench",
            config,
            checkpoint,
            "--input",
            "1x3x8x32x32",
            "--threads",
            "1",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--no-peak",
            "--json",
            str(report),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "eager-fp32" in text and "fused-fp32" in text and "x eager" in text
    assert "fastest fp32 here: " in text and "run it with: lateral predict CONFIG CKPT VIDEO" in text
    data = json.loads(report.read_text())
    assert data["macs"] > 0 and data["macs"] == data["flop_counter_macs"]
    for name in ("eager-fp32", "fused-fp32"):
        assert len(data["variants"][name]["times_s"]) == 2
        assert data["variants"][name]["max_rel_diff"] < 1e-4


def test_bench_names_the_fastest_variant_per_precision_and_how_to_run_it():
    def timed(name: str, *times: float) -> Variant:
        return Variant(name, run=lambda: None, times=list(times))

    variants = [
        timed("eager-fp32", 1.0, 1.2, 0.8),
        timed("fused-fp32", 0.5, 0.5),
        timed("openvino-fp32", 0.4, 0.45),
        timed("fused-bf16", 0.3),
        timed("compiled-bf16", 0.2, 0.25),
        Variant("onnxruntime", run=lambda: None),
    ]
    result = BenchmarkResult(
        variants, macs=1, flop_counter_macs=1, peak_fp32=0.0, peak_bf16=None, input_shape=(1, 3, 8, 32, 32), threads=1
    )
    assert result.fastest("fp32").name == "openvino-fp32"
    assert result.fastest("bf16").name == "compiled-bf16"
    assert result.fastest().name == "compiled-bf16"
    lines = how_to_run_fastest(result, recognizer=True).splitlines()
    assert lines == [
        "fastest fp32 here: openvino-fp32 (425.0 ms, 2.35x eager fp32); run it with: "
        "lateral predict CONFIG CKPT VIDEO --backend openvino",
        "fastest bf16 here: compiled-bf16 (225.0 ms, 4.44x eager fp32); run it with: "
        "lateral predict CONFIG CKPT VIDEO --precision bf16 --compile",
    ]
    backbone = how_to_run_fastest(result, recognizer=False)
    assert "lateral.optimize(model, precision='bf16', compile=True)" in backbone
    variants[-1].times = [0.1]  # onnxruntime now the fastest fp32 path: it runs an exported file
    assert "fastest fp32 here: onnxruntime" in how_to_run_fastest(result, recognizer=True)
    assert "--format onnx" in how_to_run_fastest(result, recognizer=True)


def test_cli_bench_refuses_empty_lists_and_times_each_variant_once(thin_files, capsys):
    config, checkpoint = thin_files
    base = ["bench", config, checkpoint, "--input", "1x3x8x32x32", "--threads", "1", "--no-peak"]
    for option in (["--precision", ","], ["--precision", "fp16"], ["--variants", " , "], ["--variants", "fused-fp8"]):
        assert cli_main(base + option) == 1
        assert "lateral bench: error: --" in capsys.readouterr().err
    assert cli_main(base + ["--precision", "fp32,fp32", "--repeats", "1", "--warmup", "0"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fused-fp32 ")]
    assert len(rows) == 1


def test_cli_bench_bf16_without_native_support(thin_files, capsys, monkeypatch):
    monkeypatch.setattr(optimize_module, "bf16_supported", lambda device="cpu": False)
    config, checkpoint = thin_files
    rc = cli_main(["bench", config, checkpoint, "--input", "1x3x8x32x32", "--precision", "fp32,bf16", "--threads", "1"])
    assert rc == 1 and "no native bf16" in capsys.readouterr().err
    args = [
        "bench",
        config,
        "--input",
        "1x3x8x32x32",
        "--precision",
        "bf16",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--fallback-fp32",
        "--warmup",
        "0",
        "--no-peak",
    ]
    with pytest.warns(UserWarning, match="falling back"):
        assert cli_main(args) == 0
    assert "fused-fp32" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- counting


def test_mac_count_by_hooks_matches_hand_count_and_flop_counter(thin_model):
    conv = nn.Sequential(nn.Conv3d(4, 6, (3, 3, 3), padding=1, groups=2), nn.Flatten(), nn.Linear(6 * 2 * 5 * 5, 7))
    x = torch.randn(1, 4, 2, 5, 5)
    by_hand = (6 * 2 * 5 * 5) * (4 // 2) * 27 + 7 * 6 * 2 * 5 * 5
    assert count_macs(conv, x) == by_hand == flop_counter_macs(conv, x)
    assert count_macs(thin_model, thin_input()) == flop_counter_macs(thin_model, thin_input())


def test_parse_input_shape():
    assert parse_input_shape("1x3x32x224x224") == (1, 3, 32, 224, 224)
    with pytest.raises(ValueError, match="NxCxTxHxW|N x C x T x H x W"):
        parse_input_shape("1x3x32")


# ----------------------------------------------------------------------------------------------- compile


@pytest.mark.slow
def test_compiled_copy_matches_eager(thin_model):
    ok, why = compile_available()
    if not ok:
        pytest.skip(f"torch.compile cannot build kernels here: {why}")
    torch.manual_seed(0)
    model = randomise_norms(lateral.build_model(thin_config(depth=18))).eval()  # R18: half the graph to compile
    opt = lateral.optimize(model, compile=True)
    x = thin_input()
    with torch.no_grad():
        expected = model(x)
    got = opt(x)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(opt.predict(x), model.predict(x), atol=ATOL, rtol=RTOL)  # predict runs compiled too
    if torch.backends.mkldnn.is_available():  # freezing took effect: convs are pre-packed oneDNN kernels
        with torch.profiler.profile() as prof:
            opt(x)
        ops = {event.key for event in prof.key_averages()}
        assert any(op.startswith("mkldnn::_convolution_pointwise") for op in ops), sorted(ops)
        assert "aten::slow_conv3d_forward" not in ops
    keys = list(opt.state_dict())
    assert all(k.startswith(("backbone.module.", "cls_head.")) and "_orig_mod" not in k for k in keys), keys[:5]


def test_export_without_onnx_names_the_extra(thin_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes "import onnx" fail
    config, checkpoint = thin_files
    rc = cli_main(
        ["export", config, checkpoint, "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--input", "1x3x8x32x32"]
    )
    assert rc == 1
    assert "lateral-vision[onnx]" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------ OpenVINO backend

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None  # not imported here: see below


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed (pip install 'lateral-vision[openvino]')")
def test_openvino_backend_in_its_own_interpreter():
    """tests/openvino_backend_checks.py (golden parity, views, shapes, bf16 top-1) in a fresh pytest process.

    In the full suite, a pytest process that had run OpenVINO in-process segfaulted a few tests later while
    spawning a subprocess; the same tests alone, or the suite without them, passed. OpenVINO keeps its own runtime
    threads in the process, so its checks get a process of their own.
    """
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "openvino_backend_checks.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE.parent,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    expected = "3 passed" if bf16_supported("cpu") else "2 passed, 1 skipped"
    assert expected in done.stdout, done.stdout[-2000:]


def test_openvino_backend_refuses_what_it_cannot_run(thin_model, monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        lateral.optimize(thin_model, backend="tensorrt")
    with pytest.raises(ValueError, match="OpenVINO compiles the model itself"):
        lateral.optimize(thin_model, compile=True, backend="openvino")
    with pytest.raises(ValueError, match="recognizer"):
        lateral.optimize(thin_model.backbone, backend="openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"lateral-vision\[openvino\]"):
        lateral.optimize(thin_model, backend="openvino")


def test_export_and_bench_of_a_checkpoint_that_carries_its_config_load_its_weights():
    import argparse

    from lateral.cli.export import _weights_of

    assert _weights_of(argparse.Namespace(config="run/latest.pth", checkpoint=None)) == "run/latest.pth"
    assert _weights_of(argparse.Namespace(config="cfg.py", checkpoint=None)) is None  # random weights, with a warning
    assert _weights_of(argparse.Namespace(config="run/latest.pth", checkpoint="other.pth")) == "other.pth"
