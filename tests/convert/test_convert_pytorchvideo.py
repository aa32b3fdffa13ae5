"""PyTorchVideo -> lateral: golden parity with PyTorchVideo 0.1.5, bit-identical round trip, errors that name
tensors."""

from __future__ import annotations

import pytest
import torch
from convert_testing import SMALL_ARCH, assert_same_state, synth_source_state

import lateral
from golden import GoldenCase
from lateral.checkpoint import load_checkpoint, save_checkpoint
from lateral.convert import (
    ConversionError,
    build_key_map,
    config_from_meta,
    convert_checkpoint,
    pytorchvideo,
)
from lateral.models.slowfast import slow_frame_indices


@pytest.fixture(scope="module")
def golden_case() -> GoldenCase:
    return GoldenCase("ptv_slowfast_r50_8x8")


@pytest.fixture(scope="module")
def ptv_r50_file(golden_case, tmp_path_factory):
    """The golden PyTorchVideo state dict, saved the way the hub ships it: ``{'model_state': ...}``."""
    state = golden_case.state_dict()
    path = tmp_path_factory.mktemp("ptv") / "SLOWFAST_8x8_R50.pyth"
    save_checkpoint({"model_state": state}, path)
    return path, state


def test_golden_logits_match_pytorchvideo(golden_case, ptv_r50_file):
    path, _ = ptv_r50_file
    converted = convert_checkpoint(path, "pytorchvideo")
    meta = converted["meta"]
    assert meta["arch"] == dict(
        depth=50, speed_ratio=4, channel_ratio=8, fusion_kernel=7, lateral_infl=2, num_classes=400, base_channels=64
    )
    model = lateral.build_model(config_from_meta(meta))
    load_checkpoint(model, converted, strict=True)
    model.eval()

    clip = golden_case.input()  # [1, 3, 32, 64, 64], the fast pathway's clip
    num_frames = clip.shape[2]
    backbone_cfg = meta["config"]["backbone"]
    slow = slow_frame_indices(num_frames, backbone_cfg["resample_rate"], backbone_cfg["slow_frame_sampling"])
    assert torch.equal(slow, golden_case.expected["slow_indices"])
    with torch.no_grad():
        logits = model(clip)
    expected = golden_case.expected["logits"]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_meta_describes_source_preprocessing(ptv_r50_file):
    path, _ = ptv_r50_file
    meta = convert_checkpoint(path, "pytorchvideo", speed_ratio=8, clip_len=32, frame_interval=2)["meta"]
    assert meta["normalization"] == {
        "mean": [0.45, 0.45, 0.45],
        "std": [0.225, 0.225, 0.225],
        "value_range": [0.0, 1.0],
        "channel_order": "RGB",
    }
    assert meta["sampling"]["clip_len"] == 32 and meta["sampling"]["frame_interval"] == 2
    assert meta["sampling"]["slow_frames"] == 4 and meta["sampling"]["slow_frame_sampling"] == "linspace"
    assert meta["source"]["ecosystem"] == "pytorchvideo" and meta["source"]["num_tensors"] == 662
    backbone = config_from_meta(meta)["backbone"]
    assert backbone["speed_ratio"] == 8 and backbone["resample_rate"] == 8
    assert backbone["slow_pathway"]["lateral_norm"] is True and backbone["slow_pathway"]["fusion_kernel"] == 7
    # config_from_meta hands out a copy: a caller that edits it does not change the checkpoint's meta
    config_from_meta(meta)["backbone"]["depth"] = 0
    assert config_from_meta(meta)["backbone"].get("depth") is None


def test_round_trip_is_bit_identical(ptv_r50_file, tmp_path):
    path, state = ptv_r50_file
    lateral_file = tmp_path / "slowfast_r50_8x8_lateral.pth"
    save_checkpoint(convert_checkpoint(path, "pytorchvideo"), lateral_file)
    back = convert_checkpoint(lateral_file, "lateral", "pytorchvideo")
    assert list(back) == ["model_state"]
    assert_same_state(back["model_state"], state)


def test_head_columns_are_reordered_fast_first():
    small_arch = SMALL_ARCH
    state = synth_source_state(small_arch, pytorchvideo, "pytorchvideo")
    mappings = build_key_map(small_arch, pytorchvideo, "pytorchvideo")
    head = next(m for m in mappings if m.target == "cls_head.fc_cls.weight")
    assert head.source == "blocks.6.proj.weight"
    source_weight = state[head.source]
    lateral_weight = head.apply(source_weight)
    slow, fast = small_arch.slow_feat_dim, small_arch.fast_feat_dim
    assert torch.equal(lateral_weight[:, :fast], source_weight[:, slow:])
    assert torch.equal(lateral_weight[:, fast:], source_weight[:, :slow])


def test_bare_state_dict_and_checked_expectations(tmp_path):
    state = synth_source_state(SMALL_ARCH, pytorchvideo, "pytorchvideo")
    path = tmp_path / "bare.pt"
    torch.save(dict(state), path)
    converted = convert_checkpoint(path, "pytorchvideo", depth=50, num_classes=10)
    assert converted["meta"]["arch"]["base_channels"] == 16
    with pytest.raises(ConversionError, match="R50 .* not R101"):
        convert_checkpoint(path, "pytorchvideo", depth=101)
    with pytest.raises(ConversionError, match="10 classes, not 400"):
        convert_checkpoint(path, "pytorchvideo", num_classes=400)


def test_wrong_shape_names_the_tensor(tmp_path):
    state = synth_source_state(SMALL_ARCH, pytorchvideo, "pytorchvideo")
    name = "blocks.2.multipathway_blocks.1.res_blocks.0.branch2.conv_a.weight"
    good_shape = list(state[name].shape)
    state[name] = torch.zeros(good_shape[:2] + [1, 1, 1])  # temporal kernel 1 where SlowFast's fast path has 3
    path = tmp_path / "bad.pt"
    torch.save({"model_state": dict(state)}, path)
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(path, "pytorchvideo")
    message = str(err.value)
    assert f"'{name}'" in message
    assert "backbone.fast_path.layer2.0.conv1.conv.weight" in message
    assert str(good_shape) in message


def test_missing_and_leftover_tensors_are_named(tmp_path):
    state = synth_source_state(SMALL_ARCH, pytorchvideo, "pytorchvideo")
    missing = "blocks.3.multipathway_fusion.norm.running_var"
    del state[missing]
    path = tmp_path / "missing.pt"
    torch.save(dict(state), path)
    with pytest.raises(ConversionError, match=f"1 tensors are missing: '{missing}'"):
        convert_checkpoint(path, "pytorchvideo")

    state = synth_source_state(SMALL_ARCH, pytorchvideo, "pytorchvideo")
    state["blocks.4.multipathway_fusion.conv_fast_to_slow.weight"] = torch.zeros(1)
    torch.save(dict(state), path)
    with pytest.raises(ConversionError, match="first is 'blocks.4.multipathway_fusion.conv_fast_to_slow.weight'"):
        convert_checkpoint(path, "pytorchvideo")


def test_key_map_covers_every_tensor_once(golden_case):
    from lateral.convert import SlowFastArch, arch_shapes

    arch = SlowFastArch(depth=50)
    mappings = build_key_map(arch, pytorchvideo, "pytorchvideo")
    sources = [m.source for m in mappings]
    targets = [m.target for m in mappings]
    # the map generated from the numbers spells exactly PyTorchVideo's own key list, in its order
    assert sources == [k["name"] for k in golden_case.keys]
    assert sorted(targets) == sorted(arch_shapes(arch))
    assert len(set(targets)) == len(targets)
    # R101: same spelling, 23 blocks in stage 3
    r101 = build_key_map(SlowFastArch(depth=101), pytorchvideo, "pytorchvideo")
    assert len(r101) == len(mappings) + 2 * 17 * 3 * 6
