"""Run by test_ddp.py under torchrun: train a tiny model on 2 gloo ranks, then save what each rank holds."""

import json
import sys
from pathlib import Path

import torch

from lateral.config import load_config
from lateral.engine import distributed as dist_utils
from lateral.engine.evaluate import collect_scores
from lateral.engine.train import Trainer


def main(config_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    out = Path(out_dir)
    trainer = Trainer(load_config(config_path), out / "work", progress=False)
    trainer.run()
    rank = dist_utils.rank()
    torch.save(trainer.model.state_dict(), out / f"rank{rank}.pt")
    scores, labels = collect_scores(trainer.ddp_model, trainer.val_loader, trainer.device, progress=False)
    if rank == 0:
        info = {
            "world_size": dist_utils.world_size(),
            "num_scores": len(scores),
            "labels": labels.tolist(),
            "val_size": len(trainer.val_loader.dataset),
        }
        (out / "result.json").write_text(json.dumps(info))
    trainer.close()
    del trainer
    dist_utils.cleanup()
    dist_utils.exit_worker(0)  # as `lateral train` does under torchrun


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
