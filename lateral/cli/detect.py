"""``lateral detect train | test | predict``: Faster R-CNN + FPN (standard library only at import)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lateral.cli.args import add_cfg_options, add_device
from lateral.config import ConfigError
from lateral.errors import InputError


def run_train(args: argparse.Namespace) -> int:
    from lateral.engine import distributed as dist_utils
    from lateral.engine.detection import train_detector
    from lateral.engine.loading import load_run_config

    cfg = load_run_config(args.config, args.cfg_options)
    train_detector(cfg, work_dir=args.work_dir, resume=args.resume, device=args.device)
    dist_utils.cleanup()
    return 0


def run_test(args: argparse.Namespace) -> int:
    from lateral.engine import distributed as dist_utils
    from lateral.engine.detection import (
        build_detection_dataset,
        check_detector_config,
        dataset_config,
        evaluate_detector,
        load_detector,
    )
    from lateral.engine.loading import load_run_config

    cfg = load_run_config(args.config, args.cfg_options)
    check_detector_config(cfg)
    dataset_cfg = dataset_config(cfg, args.split)
    dataset = build_detection_dataset(dataset_cfg)
    model, meta = load_detector(cfg, args.checkpoint)
    if "cat_ids" in meta and list(meta["cat_ids"]) != list(dataset.cat_ids):
        raise InputError(
            f"the checkpoint was trained on category ids {meta['cat_ids'][:10]} but {dataset_cfg['ann_file']} has "
            f"{dataset.cat_ids[:10]}"
        )
    batch_size = int(cfg[f"{args.split}_dataloader"].get("batch_size", 2))
    device = dist_utils.resolve_device(args.device)
    dist_utils.init_distributed(device)
    log = print if dist_utils.is_main_process() else (lambda *args, **kwargs: None)
    metrics = evaluate_detector(model, dataset, batch_size=batch_size, log=log, device=device)
    if args.out and dist_utils.is_main_process():
        Path(args.out).write_text(json.dumps(metrics, indent=1))
    dist_utils.cleanup()
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from lateral.data.coco import build_pipeline
    from lateral.engine import distributed as dist_utils
    from lateral.engine.detection import load_detector, predict_images
    from lateral.engine.loading import load_run_config

    if not 0.0 <= args.score_thr <= 1.0:
        raise ConfigError(f"--score-thr is a detection score between 0 and 1, got {args.score_thr}")
    cfg = load_run_config(args.config, args.cfg_options)
    model, meta = load_detector(cfg, args.checkpoint)
    datasets = [(cfg.get(f"{split}_dataloader") or {}).get("dataset") or {} for split in ("test", "val")]
    classes: list[str] = meta.get("classes") or next(
        (d["metainfo"]["classes"] for d in datasets if "metainfo" in d), []
    )
    pipeline_cfg = cfg.get("test_pipeline", next((d["pipeline"] for d in datasets if "pipeline" in d), None))
    written = predict_images(
        model,
        args.images,
        args.out,
        build_pipeline(pipeline_cfg),
        list(classes),
        meta.get("cat_ids"),
        args.score_thr,
        device=dist_utils.resolve_device(args.device),
    )
    for path in written:
        print(path)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detect train|test|predict`` to the ``lateral`` command."""
    detect = subparsers.add_parser("detect", help="object detection: train, test (COCO AP), predict")
    commands = detect.add_subparsers(dest="detect_command", metavar="SUBCOMMAND", required=True)

    train = commands.add_parser("train", help="train a detector from a config")
    train.add_argument("config", help="detection config file (.py)")
    train.add_argument("--work-dir", help="checkpoint folder (default: the config's work_dir)")
    train.add_argument(
        "--resume", help="'auto' (the newest intact checkpoint in work_dir, if any) or a checkpoint path"
    )
    add_cfg_options(train)
    add_device(train)
    train.set_defaults(func=run_train)

    test = commands.add_parser("test", help="COCO AP, AP50, AP75, APs/APm/APl of a checkpoint")
    test.add_argument("config")
    test.add_argument("checkpoint")
    test.add_argument(
        "--split",
        default="val",
        choices=("val", "test", "train"),
        help="which *_dataloader of the config to evaluate (default val_dataloader)",
    )
    test.add_argument(
        "--out",
        help="also write the metrics to this JSON file (null for a metric whose size range "
        "has no ground truth objects)",
    )
    add_cfg_options(test)
    add_device(test)
    test.set_defaults(func=run_test)

    predict = commands.add_parser("predict", help="detect objects in images: JSON boxes + drawn PNG")
    predict.add_argument("config")
    predict.add_argument("checkpoint")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--score-thr", type=float, default=0.5, help="lowest score drawn and written")
    add_cfg_options(predict)
    add_device(predict)
    predict.set_defaults(func=run_predict)
