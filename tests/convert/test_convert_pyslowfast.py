"""PySlowFast -> lateral: the PyTorch (.pyth) and Caffe2 (.pkl) key maps fill the model exactly, strict load."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest
import torch
from convert_testing import SMALL_ARCH, assert_same_state, synth_source_state

import lateral
from lateral.checkpoint import load_checkpoint, save_checkpoint
from lateral.convert import (
    ConversionError,
    SlowFastArch,
    arch_shapes,
    build_key_map,
    config_from_meta,
    convert_checkpoint,
    pyslowfast,
)

# upstream names (PySlowFast's model and its Caffe2 name conversion) -> where lateral keeps them
KNOWN_NAMES = {
    "pyslowfast": {
        "s1.pathway0_stem.conv.weight": "backbone.slow_path.conv1.conv.weight",
        "s1.pathway1_stem.bn.running_var": "backbone.fast_path.conv1.bn.running_var",
        "s1_fuse.conv_f2s.weight": "backbone.slow_path.conv1_lateral.conv.weight",
        "s4_fuse.bn.bias": "backbone.slow_path.layer3_lateral.bn.bias",
        "s2.pathway0_res0.branch1.weight": "backbone.slow_path.layer1.0.downsample.conv.weight",
        "s4.pathway1_res5.branch2.c_bn.weight": "backbone.fast_path.layer3.5.conv3.bn.weight",
        "head.projection.bias": "cls_head.fc_cls.bias",
    },
    "caffe2": {
        "conv1_w": "backbone.slow_path.conv1.conv.weight",
        "res_conv1_bn_s": "backbone.slow_path.conv1.bn.weight",
        "t_res_conv1_bn_riv": "backbone.fast_path.conv1.bn.running_var",
        "t_pool1_subsample_w": "backbone.slow_path.conv1_lateral.conv.weight",
        "t_pool1_subsample_bn_rm": "backbone.slow_path.conv1_lateral.bn.running_mean",
        "t_res2_2_branch2c_bn_subsample_w": "backbone.slow_path.layer1_lateral.conv.weight",
        "t_res4_5_branch2c_bn_subsample_bn_b": "backbone.slow_path.layer3_lateral.bn.bias",
        "res2_0_branch1_bn_b": "backbone.slow_path.layer1.0.downsample.bn.bias",
        "res2_0_branch2a_w": "backbone.slow_path.layer1.0.conv1.conv.weight",
        "t_res5_2_branch2c_bn_s": "backbone.fast_path.layer4.2.conv3.bn.weight",
        "pred_w": "cls_head.fc_cls.weight",
    },
}


@pytest.mark.parametrize("kind", ["pyslowfast", "caffe2"])
@pytest.mark.parametrize("depth", [50, 101])
def test_key_map_assigns_every_model_tensor_once(kind, depth):
    arch = SlowFastArch(depth=depth)
    mappings = build_key_map(arch, pyslowfast, kind)
    targets = Counter(m.target for m in mappings)
    assert set(targets) == set(arch_shapes(arch))
    assert max(targets.values()) == 1
    sources = [m.source for m in mappings if m.source is not None]
    assert len(sources) == len(set(sources))
    if kind == "caffe2":  # Caffe2 keeps no batch counts: exactly the num_batches_tracked buffers are filled
        assert all(m.target.endswith("num_batches_tracked") for m in mappings if m.source is None)
        assert sum(m.source is None for m in mappings) == sum(t.endswith("num_batches_tracked") for t in targets)
    by_source = {m.source: m.target for m in mappings}
    if depth == 50:
        for source, target in KNOWN_NAMES[kind].items():
            assert by_source[source] == target
    elif kind == "caffe2":  # R101's res4 has 23 blocks: its fusion reads the output of block 22
        assert by_source["t_res4_22_branch2c_bn_subsample_w"] == "backbone.slow_path.layer3_lateral.conv.weight"


CFG_TEXT = """\
DATA:
  MEAN:
  - 0.45
  NUM_FRAMES: 32
  SAMPLING_RATE: 2
  TEST_CROP_SIZE: 256
SLOWFAST:
  ALPHA: 8
  BETA_INV: 8
TEST:
  NUM_ENSEMBLE_VIEWS: 10
  NUM_SPATIAL_CROPS: 3
"""


def _load_strict(converted: dict) -> torch.nn.Module:
    model = lateral.build_model(config_from_meta(converted["meta"]))
    load_checkpoint(model, converted, strict=True)
    return model


def test_pyth_converts_and_loads_strict(tmp_path):
    state = synth_source_state(SMALL_ARCH, pyslowfast, "pyslowfast")
    path = tmp_path / "SLOWFAST_4x16_R50.pyth"
    save_checkpoint({"epoch": 196, "model_state": state, "optimizer_state": {}, "cfg": CFG_TEXT}, path)
    converted = convert_checkpoint(path, "pyslowfast")
    meta = converted["meta"]
    assert meta["source"]["layout"] == "pyslowfast"
    assert meta["arch"]["speed_ratio"] == 8  # read from the file's cfg, not the default 4
    assert meta["sampling"]["clip_len"] == 32 and meta["sampling"]["slow_frames"] == 4
    model = _load_strict(converted)
    loaded = model.state_dict()
    assert torch.equal(
        loaded["backbone.fast_path.layer2.1.conv2.conv.weight"], state["s3.pathway1_res1.branch2.b.weight"]
    )
    assert torch.equal(
        loaded["backbone.slow_path.conv1.bn.num_batches_tracked"], state["s1.pathway0_stem.bn.num_batches_tracked"]
    )
    # an explicit alpha wins over the cfg
    assert convert_checkpoint(path, "pyslowfast", speed_ratio=4)["meta"]["arch"]["speed_ratio"] == 4


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_caffe2_pkl_converts_and_loads_strict(tmp_path, protocol):
    blobs = synth_source_state(SMALL_ARCH, pyslowfast, "caffe2", as_numpy=True)
    weights = dict(blobs)
    blobs["res2_0_branch2a_w_momentum"] = blobs["res2_0_branch2a_w"] * 0  # optimizer state in training snapshots
    blobs["lr"] = blobs["pred_b"][:1]
    path = tmp_path / "SLOWFAST_8x8_R50.pkl"
    with path.open("wb") as handle:
        pickle.dump({"blobs": blobs}, handle, protocol=protocol)
    converted = convert_checkpoint(path, "pyslowfast")
    assert converted["meta"]["source"]["layout"] == "caffe2"
    model = _load_strict(converted)
    loaded = model.state_dict()
    assert torch.equal(
        loaded["backbone.slow_path.layer3_lateral.conv.weight"],
        torch.from_numpy(weights["t_res4_5_branch2c_bn_subsample_w"]),
    )
    assert torch.equal(
        loaded["backbone.fast_path.layer1.0.downsample.bn.running_var"],
        torch.from_numpy(weights["t_res2_0_branch1_bn_riv"]),
    )
    assert int(loaded["backbone.fast_path.conv1.bn.num_batches_tracked"]) == 0


def test_pyth_and_pkl_of_the_same_weights_agree(tmp_path):
    """The two PySlowFast maps put each weight in the same place: fed equal values, they give equal checkpoints."""
    pyth_maps = build_key_map(SMALL_ARCH, pyslowfast, "pyslowfast")
    caffe2_maps = build_key_map(SMALL_ARCH, pyslowfast, "caffe2")
    pyth_state = synth_source_state(SMALL_ARCH, pyslowfast, "pyslowfast")
    pyth_by_target = {m.target: m.source for m in pyth_maps}
    blobs = {m.source: pyth_state[pyth_by_target[m.target]].numpy() for m in caffe2_maps if m.source is not None}
    pyth_path, pkl_path = tmp_path / "a.pyth", tmp_path / "a.pkl"
    save_checkpoint({"model_state": pyth_state}, pyth_path)
    with pkl_path.open("wb") as handle:
        pickle.dump({"blobs": blobs}, handle, protocol=2)
    from_pyth = convert_checkpoint(pyth_path, "pyslowfast")["state_dict"]
    from_pkl = convert_checkpoint(pkl_path, "pyslowfast")["state_dict"]
    for name in from_pyth:
        if name.endswith("num_batches_tracked"):  # Caffe2 has none; the .pyth carries its count over
            continue
        assert torch.equal(from_pyth[name], from_pkl[name]), name


def test_pyth_round_trip_and_bad_pkl(tmp_path):
    state = synth_source_state(SMALL_ARCH, pyslowfast, "pyslowfast")
    src, mid = tmp_path / "src.pyth", tmp_path / "mid.pth"
    save_checkpoint({"model_state": state}, src)
    save_checkpoint(convert_checkpoint(src, "pyslowfast"), mid)
    assert_same_state(convert_checkpoint(mid, "lateral", "pyslowfast")["model_state"], state)

    blobs = synth_source_state(SMALL_ARCH, pyslowfast, "caffe2", as_numpy=True)
    blobs["t_res3_0_branch2a_bn_s"] = blobs["t_res3_0_branch2a_bn_s"][:-1]
    bad = tmp_path / "bad.pkl"
    with bad.open("wb") as handle:
        pickle.dump({"blobs": blobs}, handle)
    with pytest.raises(ConversionError, match="'t_res3_0_branch2a_bn_s' has shape \\[3\\]"):
        convert_checkpoint(bad, "pyslowfast")
    with bad.open("wb") as handle:
        pickle.dump([1, 2], handle)
    with pytest.raises(ConversionError, match="expected a dict with 'blobs'"):
        convert_checkpoint(bad, "pyslowfast")
