"""The FPN seed's own layout <-> lateral ResNetFPN(style='seed'): outputs equal after conversion, round trip exact."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lateral.checkpoint import read_checkpoint
from lateral.convert import ConversionError
from lateral.convert.fpn_seed import from_seed_fpn, seed_fpn_key_map, to_seed_fpn
from lateral.models.fpn import ResNetFPN


class SeedBlock(nn.Module):
    """A bottleneck named as in the seed: one ``bottleneck`` Sequential (conv, BN, ReLU x3 minus the last ReLU)."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * 4
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bottleneck(x) + shortcut)


class SeedLayoutFPN(nn.Module):
    """The seed's FPN: module names and forward as the seed describes them, built for this test."""

    def __init__(self, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        for stage, (width, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            layers = []
            for index in range(count):
                layers.append(SeedBlock(in_channels, width, 2 if stage > 1 and index == 0 else 1))
                in_channels = width * 4
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.toplayer = nn.Conv2d(2048, 256, 1)
        self.smooth1, self.smooth2, self.smooth3 = (nn.Conv2d(256, 256, 3, 1, 1) for _ in range(3))
        self.latlayer1, self.latlayer2, self.latlayer3 = (nn.Conv2d(c, 256, 1) for c in (1024, 512, 256))

    def forward(self, x):
        c1 = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c2 = self.layer1(c1)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)

        def up_add(top, lateral):
            return F.interpolate(top, size=lateral.shape[-2:]) + lateral

        m5 = self.toplayer(c5)
        m4 = up_add(m5, self.latlayer1(c4))
        m3 = up_add(m4, self.latlayer2(c3))
        m2 = up_add(m3, self.latlayer3(c2))
        return self.smooth3(m2), self.smooth2(m3), self.smooth1(m4), m5


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, so that a swapped tensor cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                values = (
                    torch.rand(tensor.shape, generator=gen) * 0.5 + 0.75
                    if "running_var" in name
                    else torch.randn(tensor.shape, generator=gen) * 0.05
                )
                tensor.copy_(values)
    return model.eval()


@pytest.fixture(scope="module")
def seed_model():
    return randomised(SeedLayoutFPN())


def test_converted_weights_give_the_seed_networks_pyramid(seed_model):
    converted, depth = from_seed_fpn(seed_model.state_dict(), "seed.pth")
    assert depth == 50
    model = ResNetFPN(depth=50, style="seed").eval()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = seed_model(x)
        got = list(model(x).values())
    assert len(got) == 4
    for level, (a, b) in enumerate(zip(expected, got), start=2):
        assert a.shape == b.shape, f"P{level}"
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), f"P{level}: {(a - b).abs().max()}"


def test_round_trip_is_bit_identical(seed_model):
    original = seed_model.state_dict()
    converted, _ = from_seed_fpn(original)
    back, depth = to_seed_fpn(converted)
    assert depth == 50
    assert list(back) == [m.source for m in seed_fpn_key_map(50)]
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


def test_every_seed_tensor_is_mapped_once_for_every_depth():
    for depth, blocks in ((50, (3, 4, 6, 3)), (101, (3, 4, 23, 3))):
        names = set(SeedLayoutFPN(blocks).state_dict())
        sources = [m.source for m in seed_fpn_key_map(depth)]
        assert len(sources) == len(set(sources)) == len(names)
        assert set(sources) == names


def test_errors_name_the_offending_tensor(seed_model):
    state = dict(seed_model.state_dict())
    wrong = dict(state, **{"latlayer2.weight": torch.zeros(256, 256, 1, 1)})
    with pytest.raises(ConversionError, match=r"latlayer2\.weight.*\[256, 256, 1, 1\].*fpn\.inner_blocks\.1\.0"):
        from_seed_fpn(wrong)
    missing = {k: v for k, v in state.items() if k != "smooth2.bias"}
    with pytest.raises(ConversionError, match=r"1 tensors are missing: 'smooth2\.bias'"):
        from_seed_fpn(missing)
    extra = dict(state, **{"fc.weight": torch.zeros(10, 2048)})
    with pytest.raises(ConversionError, match=r"no place.*'fc\.weight'"):
        from_seed_fpn(extra)
    with pytest.raises(ConversionError, match="not a checkpoint of the seed's FPN"):
        from_seed_fpn({"backbone.conv1.weight": torch.zeros(1)})


@pytest.mark.slow
def test_cli_writes_a_checkpoint_that_rebuilds_its_model(seed_model, tmp_path):
    source = tmp_path / "fpn50_seed.pth"
    torch.save({"model": seed_model.state_dict(), "epoch": 3}, source)
    out = tmp_path / "fpn50_lateral.pth"
    cmd = [sys.executable, "-m", "lateral", "convert", str(source), "--from", "fpn-seed", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "332 tensors" in done.stdout
    checkpoint = read_checkpoint(out)
    assert checkpoint["meta"]["config"]["model"] == dict(type="ResNetFPN", depth=50, style="seed")
    import lateral

    model = lateral.build_model(checkpoint["meta"]["config"]["model"])
    lateral.load_checkpoint(model, out, strict=True)

    back = tmp_path / "back.pth"
    cmd = [
        sys.executable,
        "-m",
        "lateral",
        "convert",
        str(out),
        "--from",
        "lateral",
        "--to",
        "fpn-seed",
        "--out",
        str(back),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    restored = SeedLayoutFPN()
    restored.load_state_dict(torch.load(back, weights_only=True), strict=True)

    cmd = [
        sys.executable,
        "-m",
        "lateral",
        "convert",
        str(source),
        "--from",
        "fpn-seed",
        "--depth",
        "101",
        "--out",
        str(tmp_path / "never.pth"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "holds an FPN50, not the FPN101" in done.stderr
