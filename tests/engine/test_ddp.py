"""Two-process DDP on CPU (gloo) through torchrun: ranks agree on the weights, evaluation counts each sample once."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_run_config
from lateral.config import write_config

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(cmd: list[str], out_dir: Path, timeout: int = 600) -> None:
    # its own process group, so that a hung run (a deadlock between ranks) is killed with its workers
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parents[1], start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (ranks waiting for each other?): {cmd}")
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    # the files the ranks wrote before a failure tell a crash during the run from one at process exit
    written = sorted(p.name for p in out_dir.iterdir())
    assert done.returncode == 0, f"files written: {written}\n" + done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_rank_gloo_training_keeps_weights_identical(tmp_path, motion_data):
    cfg = tiny_run_config(motion_data, epochs=1)
    cfg["train_cfg"] = dict(max_epochs=1, val_interval=5)
    write_config(cfg, tmp_path / "cfg.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(HERE / "ddp_worker.py"),
        str(tmp_path / "cfg.py"),
        str(tmp_path),
    ]
    run_torchrun(cmd, tmp_path)
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
    epoch = [
        json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines() if '"epoch"' in line
    ][-1]
    assert epoch["iters"] == 2  # 16 training videos split over 2 ranks, batches of 4
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["num_scores"] == result["val_size"] == 8  # 8 test videos, each scored exactly once
    assert sorted(result["labels"]) == list(range(8))
    assert (tmp_path / "work" / "epoch_1.pth").exists()


@pytest.mark.slow
@pytest.mark.ddp
def test_two_rank_detection_training_and_sharded_evaluation(tmp_path):
    from test_detection import _tiny_config

    config = _tiny_config(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(HERE / "ddp_detect_worker.py"),
        str(config),
        str(tmp_path),
    ]
    run_torchrun(cmd, tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    trained = [k for k, v in rank0.items() if v.is_floating_point() and "running_" not in k]
    assert trained and all(torch.equal(rank0[k], rank1[k]) for k in trained)  # gradients were all-reduced
    # and BN statistics were handed from rank 0 before evaluating: the ranks hold the very same model
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    logs = [json.loads((tmp_path / f"log{r}.json").read_text()) for r in (0, 1)]
    assert logs[1]["lines"] == []  # rank 1 is silent
    assert any("on 2 processes" in line for line in logs[0]["lines"])
    assert any(line.startswith("iter 3/3") for line in logs[0]["lines"])
    checkpoint = torch.load(tmp_path / "work" / "latest.pth", weights_only=True)
    assert checkpoint["meta"]["iter"] == 3
    assert all(torch.equal(checkpoint["state_dict"][k], rank0[k]) for k in trained)
    # the detections of both shards, gathered, score like one process over the whole split
    assert logs[0]["metrics"] == logs[1]["metrics"] == logs[0]["full_metrics"]
    assert logs[0]["image_ids"] != logs[1]["image_ids"]  # each rank detected on its own image
    val_images = json.loads((tmp_path / "shapes" / "val" / "annotations.json").read_text())["images"]
    assert sorted(logs[0]["image_ids"] + logs[1]["image_ids"]) == sorted(img["id"] for img in val_images)
    gathered = logs[0]["shard"] + logs[1]["shard"]
    assert len(gathered) == len(logs[0]["full"]) > 0
    for mine, theirs in zip(logs[0]["full"], gathered):
        assert mine["image_id"] == theirs["image_id"] and mine["category_id"] == theirs["category_id"]
        assert mine["bbox"] == pytest.approx(theirs["bbox"], abs=1e-3)
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)


def _list_with_bad_files_in_rank0_shard(data: Path, out: Path, positions: list[int]) -> Path:
    """A copy of the training list in which the samples that rank 0 of 2 draws at ``positions`` of epoch 1 point to
    a truncated video, so that only rank 0 meets unreadable batches there."""
    lines = (data / "train_list.txt").read_text().splitlines()
    sampler = torch.utils.data.DistributedSampler(range(len(lines)), num_replicas=2, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(0)
    rank0_indices = [list(sampler)[p] for p in positions]
    good = data / lines[0].rsplit(" ", 1)[0]
    bad = out / "truncated.mp4"
    bad.write_bytes(good.read_bytes()[:400])
    for index in rank0_indices:
        lines[index] = f"{bad} {lines[index].rsplit(' ', 1)[1]}"
    path = out / "train_with_bad.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_survive_unreadable_batches_on_one_rank_and_resume_bit_identically(tmp_path, motion_data):
    """Unreadable files in only one rank's shard (a rank skipping a step alone left the other in the gradient
    all-reduce forever): at its first step rank 0 stands in with the dataset's first readable sample, at its fourth
    with its last batch, at weight 0 both times, while rank 1 trains. A run stopped after epoch 1 and resumed ends with
    exactly the weights and per-rank BatchNorm statistics of a straight run: every rank gets back its own random
    state."""
    ann = _list_with_bad_files_in_rank0_shard(motion_data, tmp_path, positions=[0, 3])
    cfg = tiny_run_config(motion_data, epochs=2, ann_train=str(ann))
    cfg["train_dataloader"]["batch_size"] = 1
    cfg["train_cfg"] = dict(max_epochs=2, val_interval=5)
    cfg["model"]["cls_head"]["dropout_ratio"] = 0.5  # a consumer of each rank's torch random stream
    write_config(cfg, tmp_path / "cfg.py")
    for mode in ("straight", "resumed"):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            str(HERE / "ddp_resume_worker.py"),
            str(tmp_path / "cfg.py"),
            str(tmp_path),
            mode,
        ]
        run_torchrun(cmd, tmp_path, timeout=300)
    records = [json.loads(line) for line in (tmp_path / "work_straight" / "log.jsonl").read_text().splitlines()]
    first_epoch = [r for r in records if r["event"] == "epoch"][0]
    assert first_epoch["skipped_batches"] == 0 and first_epoch["iters"] == 8  # 8 steps per rank, none lost
    assert first_epoch["failed_samples"] == 2  # counted over both ranks
    for rank in (0, 1):
        straight = torch.load(tmp_path / f"straight_rank{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resumed_rank{rank}.pt", weights_only=True)
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), (rank, key)


def test_exit_worker_flushes_and_keeps_the_exit_code():
    # what `lateral` does at the end of a torchrun worker: no interpreter teardown, but nothing printed is lost
    code = (
        "import logging, sys; from lateral.engine import distributed as d; "
        "assert not d.joined_process_group(); logging.basicConfig(stream=sys.stderr); "
        "print('result', end=''); logging.getLogger('x').warning('logged'); d.exit_worker(3)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and done.stdout == "result" and "logged" in done.stderr
