"""Run by test_ddp.py under torchrun: train the tiny detector on 2 gloo ranks, save each rank's weights."""

import json
import sys
from pathlib import Path

import torch

from lateral.config import load_config
from lateral.engine import distributed as dist_utils
from lateral.engine.detection import build_detection_dataset, detect_dataset, evaluate_detector, train_detector


def main(config_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    out = Path(out_dir)
    lines: list[str] = []
    result = train_detector(load_config(config_path), out / "work", log=lines.append, device="cpu")
    rank = dist_utils.rank()
    model = result.pop("model")
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    val_set = build_detection_dataset(load_config(config_path)["val_dataloader"]["dataset"])
    shard, image_ids = detect_dataset(model, val_set, batch_size=1, log=lines.append)  # this rank's share only
    record = {"lines": lines, "metrics": result["metrics"], "shard": shard, "image_ids": image_ids}
    dist_utils.cleanup()
    if rank == 0:  # without the process group: one process over the whole split, same model, same threads
        record["full"], _ = detect_dataset(model, val_set, batch_size=1, log=lines.append)
        record["full_metrics"] = evaluate_detector(model, val_set, batch_size=2, log=lines.append)
    (out / f"log{rank}.json").write_text(json.dumps(record))
    dist_utils.exit_worker(0)  # as `lateral detect train` does under torchrun


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
