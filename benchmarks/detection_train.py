"""Train the shapes detector for a fixed budget on the CPU; print the AP50 reached and the images/s.

    python benchmarks/detection_train.py [--iters 200] [--depth 50] [--threads 2] [--work-dir D]

It uses `configs/detection/faster_rcnn_r50_fpn_shapes.py` (the built-in synthetic shapes, rendered on the first
run) with the iteration budget and backbone depth given here, then evaluates on the validation split with
pycocotools. The figures depend on the machine and on what else runs on it: they are measured, not targets.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/detection/faster_rcnn_r50_fpn_shapes.py"))
    parser.add_argument("--iters", type=int, default=200, help="training iterations (the budget)")
    parser.add_argument("--depth", type=int, default=None, help="backbone depth override (e.g. 18 for speed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--data-root", default=None, help="where the shapes data is rendered (default: work dir)")
    args = parser.parse_args()

    from lateral.config import load_config
    from lateral.engine.detection import train_detector

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="lateral_det_bench_"))
    data_root = Path(args.data_root or work_dir / "shapes")
    for split in ("train", "val"):
        cfg[f"{split}_dataloader"]["dataset"]["data_root"] = str(data_root / split)
    if args.depth is not None:
        cfg["model"]["backbone"]["depth"] = args.depth
    scale = args.iters / max(cfg["train_cfg"].get("max_iters", args.iters), 1)
    cfg["train_cfg"].update(max_iters=args.iters, val_interval=args.iters)  # evaluated once, at the end
    for scheduler in cfg.get("param_scheduler", []):
        if scheduler["type"] == "LinearLR":  # the warm-up
            scheduler["end"] = min(scheduler.get("end", 0), args.iters // 4)
        if scheduler["type"] == "MultiStepLR":
            scheduler["milestones"] = [int(m * scale) for m in scheduler["milestones"]]
    cfg["default_hooks"]["checkpoint"]["interval"] = args.iters

    started = time.perf_counter()
    result = train_detector(cfg, work_dir / "run", log=lambda line: None)
    total = time.perf_counter() - started
    images = args.iters * int(cfg["train_dataloader"].get("batch_size", 2))
    summary = {
        "iterations": args.iters,
        "backbone_depth": cfg["model"]["backbone"]["depth"],
        "threads": args.threads,
        "train_seconds": round(result["train_seconds"], 1),
        "train_images_per_s": round(images / result["train_seconds"], 2),
        "total_seconds": round(total, 1),
        "AP": round(result["metrics"].get("AP", float("nan")), 4),
        "AP50": round(result["metrics"].get("AP50", float("nan")), 4),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
