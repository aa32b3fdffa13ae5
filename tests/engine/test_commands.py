"""The CLI commands' own output: class names from a user's label map printed safely."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_predict_prints_control_characters_of_class_names_escaped_and_stores_them_as_written(
    tmp_path, config_file, motion_data
):
    num_classes = len((motion_data / "label_map.txt").read_text().split())
    names = [f"\x1b[31mclass\x07 {i}\x1b[0m" for i in range(num_classes)]
    labels = tmp_path / "labels.txt"
    labels.write_bytes(("\n".join(names) + "\n").encode("utf-16"))  # as Notepad saves 'Unicode'
    video = sorted((motion_data / "videos").rglob("*test*.mp4"))[0]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lateral",
            "predict",
            str(config_file),
            "none",
            str(video),
            "--labels",
            str(labels),
            "--topk",
            str(num_classes),
            "--out",
            str(tmp_path / "top.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    printed = sorted(line.split("  ", 1)[1] for line in out.stdout.splitlines())
    assert printed == sorted(f"\\x1b[31mclass\\x07 {i}\\x1b[0m" for i in range(num_classes))
    stored = [r["label"] for r in json.loads((tmp_path / "top.json").read_text())["top"]]
    assert sorted(stored) == sorted(names)
