"""Shared helpers of the converter tests: source checkpoints synthesised from a layout's own key map."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from golden import synth_tensor
from lateral.convert import SlowFastArch, arch_shapes, build_key_map

# a SlowFast R50 a quarter as wide (slow stem 16, fast stem 2): every name of R50, ~16x fewer weights
SMALL_ARCH = SlowFastArch(depth=50, speed_ratio=4, channel_ratio=8, fusion_kernel=7, num_classes=10, base_channels=16)


def synth_source_state(arch: SlowFastArch, layout: Any, kind: str, as_numpy: bool = False) -> OrderedDict:
    """A source-layout state dict whose names come from the key map and whose shapes come from the lateral model.

    Values are synthesised from the *source* name (as the golden fixtures are), so each tensor is distinct.
    """
    shapes = arch_shapes(arch)
    state: OrderedDict[str, Any] = OrderedDict()
    for mapping in build_key_map(arch, layout, kind):
        if mapping.source is None:
            continue
        shape = list(shapes[mapping.target])
        dtype = "int64" if mapping.target.endswith("num_batches_tracked") else "float32"
        tensor = synth_tensor(mapping.source, shape, dtype)
        if dtype == "int64":
            tensor = tensor + 7  # a count the converter must carry over, not re-zero
        state[mapping.source] = tensor.numpy() if as_numpy else tensor
    return state


def assert_same_state(actual: dict, expected: dict) -> None:
    """Same names in the same order, same dtypes, bit-identical values."""
    assert list(actual) == list(expected)
    for name, value in expected.items():
        other = actual[name]
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        assert other.dtype == value.dtype, name
        assert torch.equal(other, value), name
