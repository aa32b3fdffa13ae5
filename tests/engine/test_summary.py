"""`lateral summary`: per-layer rows and totals."""

import subprocess
import sys

import pytest

from lateral.engine.summary import default_input_shape, parse_shape, summarize


def test_summary_totals_for_the_seed_config():
    import lateral

    cfg = lateral.load_config("configs/recognition/slowfast/slowfast_r50_4x16x1_kinetics400.py")
    model = lateral.build_model(cfg["model"])
    summary = summarize(model, (1, 3, 32, 64, 64), max_depth=3)
    assert summary.total_params == 34_479_288
    names = [r.name for r in summary.rows]
    assert "backbone.slow_path.layer1_lateral" in names and "cls_head.fc_cls" in names
    row = summary.rows[names.index("backbone.slow_path.layer4")]
    assert row.output_shape == "[-1, 2048, 4, 2, 2]"
    # the slow stem conv: 64 out channels x 4 x 32 x 32 outputs, each 3 * 1 * 7 * 7 multiply-adds
    stem = summary.rows[names.index("backbone.slow_path.conv1")]
    assert stem.macs == 64 * 4 * 32 * 32 * 3 * 49
    assert summary.total_macs == sum(r.macs for r in summary.rows)
    assert default_input_shape(cfg) == (1, 3, 32, 224, 224)


@pytest.mark.slow
def test_cli_prints_table(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lateral",
            "summary",
            "configs/recognition/slowfast/slowonly_r50_8x8x1_kinetics400.py",
            "--input",
            "1x3x8x32x32",
            "--depth",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Total params: 32,454,096" in out.stdout
    assert "backbone.layer4" in out.stdout


def test_parse_shape():
    assert parse_shape("1x3x32x224x224") == (1, 3, 32, 224, 224)


@pytest.mark.slow
def test_cli_reads_the_config_a_checkpoint_carries(tmp_path):
    import lateral
    from lateral.checkpoint import save_checkpoint

    cfg = lateral.load_config("configs/recognition/slowfast/slowonly_r50_8x8x1_kinetics400.py")
    checkpoint = tmp_path / "run.pth"
    save_checkpoint({"state_dict": {}, "meta": {"config": {"model": cfg["model"]}}}, checkpoint)
    out = subprocess.run(
        [sys.executable, "-m", "lateral", "summary", str(checkpoint), "--input", "1x3x8x32x32"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "Total params: 32,454,096" in out.stdout


def _table_rows(text: str) -> list[str]:
    """The layer rows: the lines between the '=' rule under the header and the one above the totals."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"="}]
    return lines[rules[0] + 1 : rules[1]]


def test_cli_default_table_fits_a_screen_and_depth_still_overrides(capsys):
    from lateral.cli import main

    config = "configs/recognition/slowfast/slowfast_r50_4x16x1_kinetics400.py"  # 330 layers
    assert main(["summary", config, "--input", "1x3x32x32x32"]) == 0
    text = capsys.readouterr().out
    rows = _table_rows(text)
    assert 10 <= len(rows) <= 40
    assert any(r.startswith("backbone.slow_path.layer4 ") for r in rows)  # the stages are there, aggregated
    assert "rows aggregated at depth 3 of 6 to fit a screen; --depth 4 or deeper shows more" in text
    assert "Total params: 34,479,288" in text
    assert main(["summary", config, "--input", "1x3x32x32x32", "--depth", "6"]) == 0
    text = capsys.readouterr().out
    assert len(_table_rows(text)) > 300 and "rows aggregated" not in text
