"""benchmarks/gpu.py runs end to end (on the CPU here, as its smoke mode) and reports what it timed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from inference.test_export import thin_config
from lateral.config import write_config

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_benchmark_smoke_run_on_cpu(tmp_path, capsys):
    config = tmp_path / "thin.py"
    write_config({"model": thin_config()}, config)
    out = tmp_path / "times.json"
    threads = torch.get_num_threads()
    try:
        code = load_script().main(
            [
                "--device",
                "cpu",
                "--config",
                str(config),
                "--input",
                "2x3x8x32x32",
                "--repeats",
                "2",
                "--warmup",
                "0",
                "--json",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("infer-eager-fp32", "infer-cl-amp", "train-eager-fp32", "train-cl-amp"):
        assert name in printed
    report = json.loads(out.read_text())
    assert report["amp"] == "bf16" and set(report["times_s"]) == {
        "infer-eager-fp32",
        "infer-cl-amp",
        "train-eager-fp32",
        "train-cl-amp",
    }
    assert all(len(times) == 2 and min(times) > 0 for times in report["times_s"].values())


def test_gpu_benchmark_without_cuda_says_so(capsys):
    import pytest

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        load_script().main(["--repeats", "1"])
    assert "no CUDA device here" in capsys.readouterr().err
