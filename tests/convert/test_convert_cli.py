"""``lateral convert`` end to end: a small PyTorchVideo file to lateral and back, and a clean error."""

from __future__ import annotations

import pytest
import torch
from convert_testing import SMALL_ARCH, assert_same_state, synth_source_state

import lateral
from lateral import cli
from lateral.checkpoint import load_checkpoint, save_checkpoint
from lateral.convert import config_from_meta, pytorchvideo


@pytest.fixture(autouse=True)
def only_convert_command(monkeypatch):
    """Run the real ``lateral`` entry point with just this command group, independent of the others' state."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", [cli.convert])


def main(argv: list[str]) -> int:
    return cli.main(argv)


def test_cli_converts_to_lateral_and_back(tmp_path, capsys):
    state = synth_source_state(SMALL_ARCH, pytorchvideo, "pytorchvideo")
    src = tmp_path / "SLOWFAST_4x16_small.pyth"
    save_checkpoint({"model_state": state}, src)
    out = tmp_path / "converted" / "slowfast_lateral.pth"

    assert (
        main(
            [
                "convert",
                str(src),
                "--from",
                "pytorchvideo",
                "--out",
                str(out),
                "--preset",
                "4x16",
                "--num-classes",
                "10",
            ]
        )
        == 0
    )
    assert "SlowFast R50 (alpha=8" in capsys.readouterr().out
    checkpoint = torch.load(out, weights_only=True)  # what 'lateral predict' reads: tensors and plain data only
    assert set(checkpoint) == {"state_dict", "meta"}
    meta = checkpoint["meta"]
    assert meta["sampling"]["clip_len"] == 32 and meta["sampling"]["frame_interval"] == 2
    assert meta["sampling"]["slow_frames"] == 4
    model = lateral.build_model(config_from_meta(meta))
    load_checkpoint(model, checkpoint, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 32, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()

    back = tmp_path / "back.pyth"
    assert main(["convert", str(out), "--from", "lateral", "--to", "pytorchvideo", "--out", str(back)]) == 0
    assert_same_state(torch.load(back, weights_only=True)["model_state"], state)


def test_cli_reports_the_offending_tensor(tmp_path, capsys):
    state = synth_source_state(SMALL_ARCH, pytorchvideo, "pytorchvideo")
    name = "blocks.6.proj.weight"
    state[name] = state[name][:, :-1]
    src = tmp_path / "bad.pyth"
    save_checkpoint({"model_state": state}, src)
    out = tmp_path / "never.pth"
    assert main(["convert", str(src), "--from", "pytorchvideo", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lateral convert: error:") and f"'{name}'" in err
    assert not out.exists()
    assert main(["convert", str(src), "--from", "pyslowfast", "--out", str(out)]) == 1
    assert "has no 's1.pathway0_stem.conv.weight'" in capsys.readouterr().err
