"""Checkpoint loading: strict reports, head dropping, safe loading, atomic saving."""

import os

import pytest
import torch

import lateral
from lateral.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_state_dict,
    remove_partial_checkpoints,
    save_checkpoint,
)


def small_model(num_classes=5):
    return lateral.build_model(
        dict(
            type="Recognizer3D",
            backbone=dict(type="ResNet3dSlowOnly", depth=18, base_channels=4),
            cls_head=dict(type="I3DHead", in_channels=32, num_classes=num_classes),
            test_cfg=dict(average_clips="prob"),
        )
    )


def test_mmaction2_checkpoint_file_loads_strict(tmp_path):
    src = small_model()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": src.state_dict(), "meta": {"epoch": 3}}, path)
    dst = small_model()
    report = lateral.load_checkpoint(dst, path)
    assert report["meta"] == {"epoch": 3}
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_mismatch_lists_missing_unexpected_and_shapes_in_one_error():
    state = small_model().state_dict()
    state.pop("backbone.conv1.conv.weight")
    state["backbone.extra.weight"] = torch.zeros(1)
    state["cls_head.fc_cls.weight"] = torch.zeros(7, 32)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small_model(), state)
    text = str(info.value)
    assert "missing in the checkpoint (1)" in text and "backbone.conv1.conv.weight" in text
    assert "unexpected in the checkpoint (1)" in text and "backbone.extra.weight" in text
    assert "cls_head.fc_cls.weight: checkpoint [7, 32], model [5, 32]" in text


def test_drop_mismatched_head_fine_tunes_to_another_class_count():
    src = small_model(num_classes=400)
    dst = small_model(num_classes=5)
    with pytest.warns(UserWarning, match="dropped 2 head tensors"):
        report = load_checkpoint(dst, {"state_dict": src.state_dict()}, drop_mismatched_head=True)
    assert sorted(report["dropped"]) == ["cls_head.fc_cls.bias", "cls_head.fc_cls.weight"]
    assert torch.equal(dst.backbone.conv1.conv.weight, src.backbone.conv1.conv.weight)
    assert dst.cls_head.fc_cls.weight.shape == (5, 32)


def test_ddp_module_prefix_and_backbone_prefix_are_handled():
    src = small_model()
    wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}
    load_checkpoint(small_model(), wrapped)
    backbone = lateral.build_model(dict(type="ResNet3dSlowOnly", depth=18, base_channels=4))
    load_checkpoint(backbone, src.state_dict(), strict=False, strip_prefix="backbone.")
    assert torch.equal(backbone.conv1.conv.weight, src.backbone.conv1.conv.weight)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_pickled_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_truncated_and_missing_files_give_clear_errors(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"state_dict": small_model().state_dict()}, path)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(read_state_dict(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]  # no temp file left behind


def test_partial_checkpoints_of_a_killed_save_are_removed(tmp_path):
    # SIGKILL inside save_checkpoint leaves its mkstemp file (no except clause runs); nothing else is touched
    save_checkpoint({"state_dict": {"w": torch.ones(3)}}, tmp_path / "latest.pth")
    (tmp_path / ".latest.pth.k3x9q1.tmp").write_bytes(b"partial")
    (tmp_path / ".epoch_2.pth.a1b2c3.tmp").write_bytes(b"")
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden.txt", tmp_path / "epoch_1.pth"]
    for path in kept:
        path.write_bytes(b"x")
    removed = remove_partial_checkpoints(tmp_path)
    assert [p.name for p in removed] == [".epoch_2.pth.a1b2c3.tmp", ".latest.pth.k3x9q1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["latest.pth", *(p.name for p in kept)])
    assert remove_partial_checkpoints(tmp_path) == []


def test_files_that_are_not_checkpoints_are_named_as_such(tmp_path):
    (tmp_path / "notes.pth").write_text("# not a checkpoint\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "noise.pth").write_bytes(bytes(range(7, 200)))
    with pytest.raises(CheckpointError, match=r"notes.pth is not a PyTorch checkpoint \(a file starting with b'# no'"):
        read_state_dict(tmp_path / "notes.pth")
    with pytest.raises(CheckpointError, match="an empty file"):
        read_state_dict(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "noise.pth")


def test_hints_fit_the_mismatch():
    other_architecture = lateral.build_model(
        dict(
            type="Recognizer3D",
            backbone=dict(type="ResNet3dSlowOnly", depth=50, base_channels=4),
            cls_head=dict(type="I3DHead", in_channels=128, num_classes=5),
        )
    )
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small_model(), other_architecture.state_dict())
    text = str(info.value)
    assert "another architecture" in text
    assert "drop_mismatched_head" not in text and "strip_prefix" not in text
    with pytest.raises(CheckpointError, match="only the classifier differs: use drop_mismatched_head=True"):
        load_checkpoint(small_model(5), small_model(7).state_dict())
    backbone = lateral.build_model(dict(type="ResNet3dSlowOnly", depth=18, base_channels=4))
    with pytest.raises(CheckpointError, match="pass strip_prefix='backbone.'"):
        load_checkpoint(backbone, small_model().state_dict())


def test_source_names_a_checkpoint_passed_as_a_dict():
    state = small_model(7).state_dict()
    with pytest.raises(CheckpointError, match="^runs/x.pth does not fit Recognizer3D"):
        load_checkpoint(small_model(5), state, source="runs/x.pth")


def test_saving_onto_a_folder_names_the_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give the checkpoint a file name"):
        save_checkpoint({"state_dict": {}}, tmp_path)
    assert not list(tmp_path.iterdir())


def test_numpy_numbers_in_meta_load_and_code_beside_them_is_named(tmp_path, monkeypatch):
    import numpy as np

    src = small_model()
    meta = {"hook_msgs": {"best_score": np.float64(0.7), "epochs": np.int64(3), "curve": np.array([0.1, 0.2])}}
    torch.save({"state_dict": src.state_dict(), "meta": meta}, tmp_path / "mmcv.pth")
    torch.save(
        {"state_dict": src.state_dict(), "meta": meta}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False
    )  # the format of older model-zoo files
    for name in ("mmcv.pth", "legacy.pth"):
        report = load_checkpoint(small_model(), tmp_path / name)  # as mmcv's EvalHook writes them
        assert report["meta"]["hook_msgs"]["best_score"] == 0.7
        assert list(report["meta"]["hook_msgs"]["curve"]) == [0.1, 0.2]
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": src.state_dict(), "meta": meta, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"\(.*(posix|os)\.system.*\), so it was not loaded") as info:
        read_state_dict(tmp_path / "evil.pth")
    assert "\x1b[" not in str(info.value)  # no terminal colour codes from torch's message
    assert "numpy" not in str(info.value).split("(")[1]  # only what is refused is named, not the numpy data
    torch.save(
        {"state_dict": src.state_dict(), "evil": Payload()},
        tmp_path / "evil_legacy.pth",
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(CheckpointError, match=r"\((posix|os)\.system\), so it was not loaded"):
        read_state_dict(tmp_path / "evil_legacy.pth")
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_the_strip_prefix_hint_leads_to_a_load_that_works():
    backbone = lateral.build_model(dict(type="ResNet3dSlowOnly", depth=18, base_channels=4))
    recognizer_state = small_model().state_dict()
    with pytest.raises(CheckpointError, match="pass strip_prefix='backbone.'"):
        load_checkpoint(backbone, recognizer_state)
    report = load_checkpoint(backbone, recognizer_state, strict=True, strip_prefix="backbone.")  # cls_head.* left out
    assert report["unexpected"] == [] and len(report["loaded"]) == len(backbone.state_dict())


def test_load_checkpoint_names_wrong_argument_types():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="takes a file path or a checkpoint dict, got NoneType"):
        lateral.load_checkpoint(model, None)
    with pytest.raises(TypeError, match="takes a file path or a checkpoint dict, got int"):
        lateral.load_checkpoint(model, 3)
    with pytest.raises(TypeError, match="fills an nn.Module, got NoneType"):
        lateral.load_checkpoint(None, {"weight": torch.zeros(2, 2)})


def test_a_plain_pickle_is_named_as_such(tmp_path):
    import pickle

    import numpy as np

    from lateral.checkpoint import CheckpointError, read_checkpoint

    path = tmp_path / "caffe2.pyth"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros(3)}}, protocol=4))
    with pytest.raises(CheckpointError, match="is a plain Python pickle, not a file torch.save wrote"):
        read_checkpoint(path)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)  # still read
    assert torch.equal(read_checkpoint(legacy)["w"], torch.ones(2))


def test_bytes_damaged_inside_tensor_data_are_refused_naming_the_member(tmp_path):
    from checkpoint_damage import zero_tensor_bytes
    from lateral.checkpoint import read_checkpoint

    path = tmp_path / "epoch_3.pth"
    state = small_model().state_dict()
    save_checkpoint({"state_dict": state, "meta": {"epoch": 3}}, path)
    member = zero_tensor_bytes(path)
    # torch.load itself does not check the archive's CRCs: this is what read_checkpoint must catch
    silently = torch.load(path, weights_only=True)["state_dict"]
    assert any(not torch.equal(silently[k], state[k]) for k in state)
    with pytest.raises(
        CheckpointError,
        match=rf"epoch_3.pth is damaged: its member '{member}' \(tensor data, "
        r"\d+ bytes\) fails its CRC-32 check \(CRC-32 0x[0-9a-f]{8}, stored "
        r"0x[0-9a-f]{8}\).*earlier checkpoint",
    ):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="is damaged"):  # every reader goes through the check
        load_checkpoint(small_model(), path)


def test_a_damaged_member_header_is_named_and_unchecksummed_files_still_load(tmp_path):
    import zipfile

    from lateral.checkpoint import read_checkpoint

    path = tmp_path / "latest.pth"
    save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    with zipfile.ZipFile(path) as archive:
        tensor = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    data = bytearray(path.read_bytes())
    data[tensor.header_offset : tensor.header_offset + 4] = bytes(4)
    path.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError,
        match=r"latest.pth is damaged: its member '.*data/0' \(tensor data, "
        r"12 bytes\) has a damaged header",
    ):
        read_checkpoint(path)
    # torch.save(..., compute_crc32=False) stores CRC 0 everywhere: nothing to check against, so it is read
    from torch.utils.serialization import config

    unchecked = tmp_path / "no_crc.pth"
    config.save.compute_crc32 = False
    try:
        torch.save({"w": torch.ones(2)}, unchecked)
    finally:
        config.save.compute_crc32 = True
    assert torch.equal(read_checkpoint(unchecked)["w"], torch.ones(2))


def test_mismatch_error_leads_with_the_diagnosis_and_the_fix():
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small_model(8), small_model(400).state_dict(), source="k400.pth")
    first, *rest = str(info.value).splitlines()
    assert first == (
        "k400.pth does not fit Recognizer3D: the checkpoint's classifier is for 400 classes and the "
        "model's for 8; only the classifier differs: use drop_mismatched_head=True to fine-tune to "
        "another class count (load_from= in a training config does this), or build the model with "
        "num_classes=400 to use the checkpoint as it is (--cfg-options model.cls_head.num_classes=400)"
    )
    assert rest[0] == "  (2 shape mismatched tensors; details below)"
    assert "hint" not in str(info.value)
    # a real architecture mismatch: the diagnosis first, then lists cut to a few keys with the count of the rest
    deeper = lateral.build_model(
        dict(
            type="Recognizer3D",
            backbone=dict(type="ResNet3dSlowOnly", depth=50, base_channels=4),
            cls_head=dict(type="I3DHead", in_channels=128, num_classes=5),
        )
    )
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small_model(), deeper.state_dict(), source="r50.pth")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("r50.pth does not fit Recognizer3D: the checkpoint comes from another architecture")
    assert lines[1] == "  (198 unexpected, 28 shape mismatched tensors; details below)"
    assert "    ... and 190 more" in lines and "    ... and 20 more" in lines
    assert len(lines) <= 24
