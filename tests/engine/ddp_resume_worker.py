"""Run by test_ddp.py under torchrun: train straight through ('straight'), or one epoch and then resume ('resumed'),
and save each rank's final state dict."""

import sys
from pathlib import Path

import torch

from lateral.config import load_config
from lateral.engine import distributed as dist_utils
from lateral.engine.train import Trainer


def main(config_path: str, out_dir: str, mode: str) -> None:
    torch.set_num_threads(1)
    cfg = load_config(config_path)
    work = Path(out_dir) / f"work_{mode}"
    if mode == "resumed":
        first = Trainer(cfg, work, progress=False)
        first.max_epochs = 1  # stop after epoch 1, as a killed run would
        first.run()
        first.close()
        del first
        trainer = Trainer(cfg, work, resume="auto", progress=False)
        assert trainer.start_epoch == 1
    else:
        trainer = Trainer(cfg, work, progress=False)
    trainer.run()
    torch.save(trainer.model.state_dict(), Path(out_dir) / f"{mode}_rank{dist_utils.rank()}.pt")
    trainer.close()
    del trainer
    dist_utils.cleanup()
    dist_utils.exit_worker(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
