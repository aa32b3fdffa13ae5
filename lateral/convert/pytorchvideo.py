"""PyTorchVideo's ``create_slowfast`` layout (the ``slowfast_r50`` / ``slowfast_r101`` hub models).

``create_slowfast`` stacks ``blocks.0`` (the two stems and the fusion after them), ``blocks.1..4`` (the residual
stages, each followed by a fusion except the last), ``blocks.5`` (pool and concatenate, no weights) and
``blocks.6`` (the classifier ``proj``). Within a stage, ``multipathway_blocks.0`` is the slow pathway and
``multipathway_blocks.1`` the fast one; ``res_blocks.N`` are its bottlenecks (``branch1_conv`` shortcut,
``branch2.conv_a/b/c``). The fusion ``FuseFastToSlow`` is a time-strided conv, BN and ReLU whose output is
concatenated after the slow features, as lateral's ``lateral_norm=True`` lateral connection.

Files are either bare state dicts or the hub's ``{'model_state': ...}``.
"""

from __future__ import annotations

import os
from pathlib import Path

from lateral.checkpoint import extract_state_dict, read_checkpoint
from lateral.convert import BN_PARAMS, ConvBN, LoadedCheckpoint

__all__ = ["read", "conv_bn_names", "head_names", "WRITABLE_KIND"]

WRITABLE_KIND = "pytorchvideo"


def read(path: str | os.PathLike) -> LoadedCheckpoint:
    """Load a PyTorchVideo checkpoint (tensors only, ``weights_only=True``)."""
    state = extract_state_dict(read_checkpoint(Path(path)), str(path))
    return LoadedCheckpoint(state=dict(state), kind=WRITABLE_KIND)


def conv_bn_names(unit: ConvBN, stage_blocks: tuple[int, ...], kind: str = WRITABLE_KIND) -> tuple[str, dict[str, str]]:
    """PyTorchVideo names of a unit's conv weight and of its BN tensors (``{'weight': ..., 'running_var': ...}``)."""
    if unit.part == "stem":
        prefix = f"blocks.0.multipathway_blocks.{unit.pathway}"
        conv, norm = f"{prefix}.conv", f"{prefix}.norm"
    elif unit.part == "fuse":
        prefix = f"blocks.{unit.stage}.multipathway_fusion"
        conv, norm = f"{prefix}.conv_fast_to_slow", f"{prefix}.norm"
    else:
        prefix = f"blocks.{unit.stage}.multipathway_blocks.{unit.pathway}.res_blocks.{unit.block}"
        if unit.part == "branch1":
            conv, norm = f"{prefix}.branch1_conv", f"{prefix}.branch1_norm"
        else:
            conv, norm = f"{prefix}.branch2.conv_{unit.part}", f"{prefix}.branch2.norm_{unit.part}"
    return f"{conv}.weight", {param: f"{norm}.{param}" for param in BN_PARAMS}


def head_names(num_stages: int, kind: str = WRITABLE_KIND) -> tuple[str, str]:
    """The classifier: the block after the stages and the pool-concat block (``blocks.6`` for four stages)."""
    return f"blocks.{num_stages + 2}.proj.weight", f"blocks.{num_stages + 2}.proj.bias"
