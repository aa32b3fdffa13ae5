"""Two-process DDP on CPU (gloo) through torchrun: ranks agree on the weights, evaluation counts each sample once."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lateral.config import write_config

from conftest import tiny_run_config

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.ddp
def test_two_rank_gloo_training_keeps_weights_identical(tmp_path, motion_data):
    cfg = tiny_run_config(motion_data, epochs=1)
    cfg["train_cfg"] = dict(max_epochs=1, val_interval=5)
    write_config(cfg, tmp_path / "cfg.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(HERE / "ddp_worker.py"), str(tmp_path / "cfg.py"), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=HERE.parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    import lateral

    model = lateral.build_model(cfg["model"])
    params = [name for name, _ in model.named_parameters()]
    assert rank0.keys() == rank1.keys()
    # gradients are all-reduced, so every parameter is bit-identical across ranks (BN running statistics are
    # per-rank unless sync_bn is set; checkpoints hold rank 0's)
    for key in params:
        assert torch.equal(rank0[key], rank1[key]), key
    epoch = [json.loads(l) for l in (tmp_path / "work" / "log.jsonl").read_text().splitlines() if '"epoch"' in l][-1]
    assert epoch["iters"] == 2  # 16 training videos split over 2 ranks, batches of 4
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["num_scores"] == result["val_size"] == 8  # 8 test videos, each scored exactly once
    assert sorted(result["labels"]) == list(range(8))
    assert (tmp_path / "work" / "epoch_1.pth").exists()
