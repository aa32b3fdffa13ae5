"""Golden reference cases: weights synthesised from key names, inputs from a fixed seed (see fixtures/golden)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"


def synth_tensor(name: str, shape: list[int], dtype: str = "float32") -> torch.Tensor:
    """The tensor the reference used for ``name``: seeded by the CRC32 of the name."""
    if dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    if len(shape) <= 1:
        if name.endswith("running_var") or name.endswith("weight"):
            return torch.rand(shape, generator=gen) * 0.5 + 0.75
        return torch.randn(shape, generator=gen) * 0.1
    return torch.randn(shape, generator=gen) * (1.0 / math.prod(shape[1:])) ** 0.5


def synth_state_dict(keys: list[dict]) -> dict[str, torch.Tensor]:
    return {k["name"]: synth_tensor(k["name"], k["shape"], k["dtype"]) for k in keys}


def golden_input(shape: list[int]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


class GoldenCase:
    """One folder of fixtures/golden: config, key list, input and expected outputs."""

    def __init__(self, name: str):
        self.dir = GOLDEN_DIR / name
        self.config = json.loads((self.dir / "config.json").read_text())
        self.keys = json.loads((self.dir / "keys.json").read_text())
        self.input_shape = json.loads((self.dir / "input.json").read_text())["input_shape"]
        self.expected = torch.load(self.dir / "expected.pt", weights_only=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return synth_state_dict(self.keys)

    def input(self) -> torch.Tensor:
        return golden_input(self.input_shape)
