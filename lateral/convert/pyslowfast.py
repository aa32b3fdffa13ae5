"""PySlowFast's SlowFast layouts: PyTorch ``.pyth`` checkpoints and the Caffe2 ``.pkl`` ones of its model zoo.

PyTorch (``kind='pyslowfast'``): ``s1`` holds ``pathway0_stem`` (slow) and ``pathway1_stem`` (fast), ``s1_fuse`` to
``s4_fuse`` the fast-to-slow fusions (``conv_f2s`` + ``bn``), ``s2`` to ``s5`` the residual stages
(``pathway{p}_res{b}`` with ``branch1`` / ``branch1_bn`` and ``branch2.a`` / ``a_bn`` / ``b`` / ``c``), and
``head.projection`` the classifier over the pooled slow then fast features. Files are
``{'model_state': ..., 'cfg': <yaml text>, ...}``.

Caffe2 (``kind='caffe2'``): a pickle ``{'blobs': {name: ndarray}}``; the slow pathway has bare names
(``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``), the fast pathway the same with a ``t_`` prefix, the
fusions are ``t_pool1_subsample`` and ``t_res{k}_{last block}_branch2c_bn_subsample``, the classifier ``pred``.
BN blobs are ``_s`` (scale), ``_b`` (shift), ``_rm`` (running mean) and ``_riv`` (running variance, despite the
name). Caffe2 does not count BN batches, so ``num_batches_tracked`` is filled with zeros.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lateral.checkpoint import extract_state_dict, read_checkpoint
from lateral.convert import BN_PARAMS, ConvBN, ConversionError, LoadedCheckpoint
from lateral.convert.safe_pickle import load_numpy_pickle

__all__ = ["read", "conv_bn_names", "head_names", "read_cfg_numbers", "WRITABLE_KIND"]

WRITABLE_KIND = "pyslowfast"
_CAFFE2_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv", "num_batches_tracked": None}
# blobs of a Caffe2 training snapshot that are not weights
_CAFFE2_NON_WEIGHTS = ("lr", "model_iter")
# PySlowFast cfg entry -> hint read by lateral.convert
_CFG_HINTS = {
    ("SLOWFAST", "ALPHA"): "speed_ratio",
    ("DATA", "NUM_FRAMES"): "clip_len",
    ("DATA", "SAMPLING_RATE"): "frame_interval",
    ("TEST", "NUM_ENSEMBLE_VIEWS"): "num_clips",
    ("TEST", "NUM_SPATIAL_CROPS"): "num_crops",
    ("DATA", "TEST_CROP_SIZE"): "crop_size",
}


def read(path: str | os.PathLike) -> LoadedCheckpoint:
    """Load a PySlowFast checkpoint: Caffe2 when the file ends in ``.pkl`` (restricted unpickler), else PyTorch."""
    path = Path(path)
    if path.suffix == ".pkl":
        obj = load_numpy_pickle(path)
        blobs = obj.get("blobs") if isinstance(obj, dict) else None
        if not isinstance(blobs, dict):
            found = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
            raise ConversionError(f"{path} is not a Caffe2 checkpoint: expected a dict with 'blobs', got {found}")
        state = {name: value for name, value in blobs.items() if isinstance(value, np.ndarray)}
        ignored = [name for name in blobs if name.endswith("_momentum") or name in _CAFFE2_NON_WEIGHTS]
        return LoadedCheckpoint(state=state, kind="caffe2", ignored=ignored)
    obj = read_checkpoint(path)
    hints = read_cfg_numbers(obj["cfg"]) if isinstance(obj.get("cfg"), str) else {}
    return LoadedCheckpoint(state=dict(extract_state_dict(obj, str(path))), kind=WRITABLE_KIND, hints=hints)


def read_cfg_numbers(cfg_text: str) -> dict[str, int]:
    """The integers of :data:`_CFG_HINTS` in a PySlowFast ``cfg.dump()`` (two-level YAML: ``SECTION:`` /
    ``  KEY: value``), read without a YAML library."""
    hints: dict[str, int] = {}
    section = ""
    for line in cfg_text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, _, value = line.strip().partition(":")
        if indent == 0:
            section = key
        elif indent == 2 and (section, key) in _CFG_HINTS and value.strip().isdigit():
            hints[_CFG_HINTS[(section, key)]] = int(value.strip())
    return hints


def conv_bn_names(
    unit: ConvBN, stage_blocks: tuple[int, ...], kind: str = WRITABLE_KIND
) -> tuple[str, dict[str, str | None]]:
    """Names of a unit's conv weight and BN tensors, in the PyTorch (``'pyslowfast'``) or ``'caffe2'`` layout."""
    if kind == "caffe2":
        return _caffe2_names(unit, stage_blocks)
    if kind != WRITABLE_KIND:
        raise ConversionError(f"unknown PySlowFast layout '{kind}'; expected 'pyslowfast' or 'caffe2'")
    if unit.part == "stem":
        conv, norm = f"s1.pathway{unit.pathway}_stem.conv", f"s1.pathway{unit.pathway}_stem.bn"
    elif unit.part == "fuse":
        conv, norm = f"s{unit.stage + 1}_fuse.conv_f2s", f"s{unit.stage + 1}_fuse.bn"
    else:
        prefix = f"s{unit.stage + 1}.pathway{unit.pathway}_res{unit.block}"
        if unit.part == "branch1":
            conv, norm = f"{prefix}.branch1", f"{prefix}.branch1_bn"
        else:
            conv, norm = f"{prefix}.branch2.{unit.part}", f"{prefix}.branch2.{unit.part}_bn"
    return f"{conv}.weight", {param: f"{norm}.{param}" for param in BN_PARAMS}


def _caffe2_names(unit: ConvBN, stage_blocks: tuple[int, ...]) -> tuple[str, dict[str, str | None]]:
    fast = "t_" if unit.pathway == 1 else ""
    if unit.part == "stem":
        conv, norm = f"{fast}conv1", f"{fast}res_conv1_bn"
    elif unit.part == "fuse" and unit.stage == 0:
        conv, norm = "t_pool1_subsample", "t_pool1_subsample_bn"
    elif unit.part == "fuse":
        # Caffe2 named the fusion after the fast blob it reads: the last block's output of stage res{k}
        if len(stage_blocks) < unit.stage:
            raise ConversionError(f"the Caffe2 name of fusion {unit.stage} needs the blocks per stage")
        conv = f"t_res{unit.stage + 1}_{stage_blocks[unit.stage - 1] - 1}_branch2c_bn_subsample"
        norm = f"{conv}_bn"
    else:
        prefix = f"{fast}res{unit.stage + 1}_{unit.block}"
        conv = f"{prefix}_branch1" if unit.part == "branch1" else f"{prefix}_branch2{unit.part}"
        norm = f"{conv}_bn"
    names = {param: None if suffix is None else f"{norm}_{suffix}" for param, suffix in _CAFFE2_BN.items()}
    return f"{conv}_w", names


def head_names(num_stages: int, kind: str = WRITABLE_KIND) -> tuple[str, str]:
    """The classifier over the pooled [slow, fast] features."""
    if kind == "caffe2":
        return "pred_w", "pred_b"
    return "head.projection.weight", "head.projection.bias"
