"""``lateral train | test | predict | demo``: the arguments, and the calls into the engine that run them.

Only the standard library is imported here: ``lateral --help`` must not wait for torch. Each command imports the
engine when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, cast

from lateral.cli.args import add_cfg_options, positive_int
from lateral.config import ConfigError
from lateral.errors import InputError

__all__ = ["add_cli", "parse_views", "predict_targets", "timeline_folder_names", "claim_output_folder"]


def parse_views(text: str) -> tuple[int, int]:
    """``'3x10'`` -> (3 crops, 10 clips)."""
    try:
        crops, clips = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--views is written CROPSxCLIPS, e.g. 3x10, got '{text}'") from None
    if crops < 1 or clips < 1:
        raise ConfigError(f"--views needs positive numbers, got '{text}'")
    return crops, clips


# ---------------------------------------------------------------------------- train


def run_train(args: argparse.Namespace) -> int:
    from lateral.engine.loading import load_run_config
    from lateral.engine.train import train

    cfg = load_run_config(args.config, args.cfg_options)
    if not args.config.endswith(".py"):
        print(
            f"training with the config stored in {args.config}; its weights are not loaded (--resume "
            f"{args.config} continues that run, --cfg-options load_from={args.config} starts from its weights)",
            file=sys.stderr,
        )
    work_dir = args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(args.config).stem)
    resume = args.resume if args.resume else ("auto" if cfg.get("resume") is True else None)
    if args.channels_last:
        cfg["channels_last"] = True
    result = train(cfg, work_dir, resume=resume, amp=args.amp, device=args.device, progress=not args.no_progress)
    from lateral.engine import distributed as dist_utils

    if dist_utils.is_main_process():
        last = result["history"][-1] if result["history"] else {}
        print(json.dumps({"work_dir": work_dir, "last_epoch": last, "best": result["best"]}, indent=1))
    dist_utils.cleanup()
    return 0


# ---------------------------------------------------------------------------- test


def run_test(args: argparse.Namespace) -> int:
    from lateral.checkpoint import load_checkpoint
    from lateral.data.datasets import check_label_range
    from lateral.engine import distributed as dist_utils
    from lateral.engine.evaluate import collect_scores
    from lateral.engine.loading import load_run_config, read_label_names
    from lateral.engine.metrics import classification_metrics, save_confusion
    from lateral.engine.predict import set_test_views
    from lateral.engine.train import build_loader, resolve_amp
    from lateral.registry import build_model

    if args.checkpoint is None:
        if args.config.endswith(".py"):
            raise ConfigError(
                "lateral test CONFIG.py needs a CHECKPOINT to test (or give one checkpoint that carries its config)"
            )
        args.checkpoint = args.config
    cfg = load_run_config(args.config, args.cfg_options)
    loader_cfg = dict(cfg.get("test_dataloader") or {})
    if not loader_cfg:
        raise ConfigError("the config has no test_dataloader")
    dataset_cfg = dict(loader_cfg["dataset"])
    if args.views:
        crops, clips = parse_views(args.views)
        dataset_cfg["pipeline"] = set_test_views(dataset_cfg["pipeline"], crops, clips)
    loader_cfg["dataset"] = dataset_cfg
    if args.batch_size:
        loader_cfg["batch_size"] = args.batch_size
    device = dist_utils.resolve_device(args.device)
    distributed = dist_utils.init_distributed(device)
    loader = build_loader(loader_cfg, train=False, seed=0, distributed=distributed, name="test_dataloader")
    model = build_model(cfg["model"])
    check_label_range(loader.dataset, model.num_classes, "test_dataloader")
    load_checkpoint(model, args.checkpoint, strict=True)
    if args.max_testing_views:
        model.max_testing_views = args.max_testing_views
    model.to(device).eval()
    scores, labels = collect_scores(model, loader, device, resolve_amp(args.amp, device), not args.no_progress)
    failed = int(dist_utils.sum_over_ranks(getattr(loader.dataset, "num_failures", 0), device))  # every rank's shard
    if dist_utils.is_main_process():
        if len(labels) == 0:
            raise InputError("no test sample could be decoded")
        metrics = classification_metrics(scores, labels)
        if metrics["num_samples"] == 0:
            raise InputError(
                f"none of the {len(labels)} test samples has a label (all are -1), so there is nothing "
                "to score; `lateral predict` classifies unlabelled videos"
            )
        names = read_label_names(args.labels, cfg, model.num_classes)
        out_dir = Path(args.out or Path(args.checkpoint).parent / "test")
        out_dir.mkdir(parents=True, exist_ok=True)
        if "confusion_matrix" in metrics:
            save_confusion(metrics["confusion_matrix"], names, out_dir)
        metrics["failed_samples"] = failed
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        printable = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
        print(json.dumps(printable, indent=1))
        if metrics.get("num_unlabelled"):
            print(
                f"{metrics['num_unlabelled']} unlabelled samples (label -1) were left out of the metrics",
                file=sys.stderr,
            )
        print(f"metrics{' and confusion matrix' if 'confusion_matrix' in metrics else ''} written to {out_dir}")
    dist_utils.cleanup()
    return 0


# ---------------------------------------------------------------------------- predict


def predict_targets(paths: list[str]) -> tuple[str, str, list[Path]]:
    """(config, checkpoint, videos) from ``CONFIG CKPT VIDEO...`` or ``CKPT VIDEO...``; a folder stands for the
    video files in it (sorted by name)."""
    from lateral.data.decode import VIDEO_EXTENSIONS

    usage = (
        "predict takes CONFIG CKPT VIDEO [VIDEO ...], or CKPT VIDEO [VIDEO ...] for a checkpoint that carries "
        "its config"
    )
    if paths and paths[0].endswith(".py"):
        if len(paths) < 3:
            raise ConfigError(usage)
        config_path, checkpoint, targets = paths[0], paths[1], paths[2:]
    else:
        if len(paths) < 2:
            raise ConfigError(usage)
        config_path = checkpoint = paths[0]
        targets = paths[1:]
    from lateral.data.datasets import find_video_files

    videos: list[Path] = []
    for target in map(Path, targets):
        if target.is_dir():
            # the files lateral data check finds: subfolders too, and broken links, which then fail, counted
            found = find_video_files(target)
            if not found:
                raise FileNotFoundError(f"{target} is a folder with no video files ({', '.join(VIDEO_EXTENSIONS)})")
            videos.extend(found)
        elif not target.exists():
            raise FileNotFoundError(f"video not found: {target}")
        else:
            videos.append(target)
    return config_path, checkpoint, videos


def timeline_folder_names(videos: list[Path]) -> dict[Path, str]:
    """``<stem>_timeline`` per video; videos whose names would collide (a/clip.mp4, b/clip.mp4, b/clip.webm) get
    their parent folder and suffix in it, then a number, so no timeline overwrites another."""

    def plain(video: Path) -> str:
        return f"{video.stem}_timeline"

    def longer(video: Path) -> str:
        return f"{video.parent.name}_{video.stem}_{video.suffix.lstrip('.')}_timeline"

    counts: dict[str, int] = {}
    for video in videos:
        counts[plain(video)] = counts.get(plain(video), 0) + 1
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for video in videos:
        name = plain(video) if counts[plain(video)] == 1 else longer(video)
        base, number = name, 2
        while name in taken:
            name, number = f"{base}_{number}", number + 1
        taken.add(name)
        names[video] = name
    return names


# where ``predict --window`` writes its timelines when no --out is given (never the current folder itself)
DEFAULT_PREDICTIONS_DIR = "lateral_predictions"


def claim_output_folder(folder: Path, overwrite: bool) -> bool:
    """Create ``folder`` for one run's output; returns whether this call created it.

    ``mkdir`` without ``exist_ok`` is the claim: of two processes writing to the same folder exactly one creates
    it, so a run never overwrites another run's output unasked. With ``overwrite`` an existing folder is reused.

    Raises:
        FileExistsError: ``folder`` exists (and ``overwrite`` is not set, or it is a file).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
        return True
    except FileExistsError:
        if not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder; choose another --out") from None
        if overwrite:
            return False
        raise FileExistsError(_exists_message(folder)) from None


def _exists_message(path: str | Path) -> str:
    return (
        f"{path} already exists (the output of an earlier run?); choose another --out, or add --overwrite to replace it"
    )


def timeline_folders(videos: list[Path], out: str | None) -> dict[Path, Path]:
    """The folder each video's timeline goes to: ``--out`` itself for one video, else a
    :func:`timeline_folder_names` folder in ``--out`` (default :data:`DEFAULT_PREDICTIONS_DIR`)."""
    if out and len(videos) == 1:
        return {videos[0]: Path(out)}
    root = Path(out or DEFAULT_PREDICTIONS_DIR)
    return {video: root / name for video, name in timeline_folder_names(videos).items()}


def run_predict(args: argparse.Namespace) -> int:
    from lateral.engine.predict import parse_seconds

    if args.stride and not args.window:
        raise ConfigError("--stride is the step between --window windows; give --window too (e.g. --window 2s)")
    config_path, checkpoint, videos = predict_targets(args.paths)
    windows = None  # (window, stride) in seconds for a timeline
    if args.window:
        window_s = parse_seconds(args.window)
        windows = (window_s, parse_seconds(args.stride) if args.stride else window_s / 2)
    elif args.out and Path(args.out).exists() and not args.overwrite:  # refused before any work, not after it
        raise FileExistsError(_exists_message(args.out))
    # every timeline folder is claimed before any work, so that a second run into the same folders stops at once
    folders = timeline_folders(videos, args.out) if args.window else {}
    claimed: list[Path] = []
    try:
        for folder in folders.values():
            if claim_output_folder(folder, args.overwrite):
                claimed.append(folder)
        if folders and not args.out:
            print(f"timelines go to {DEFAULT_PREDICTIONS_DIR}/ (--out chooses another folder)")
        return _predict_each(args, config_path, checkpoint, videos, windows, folders)
    finally:
        for folder in claimed:  # a folder claimed for a video that failed (or a run that stopped) is given back
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _predict_each(
    args: argparse.Namespace,
    config_path: str,
    checkpoint: str,
    videos: list[Path],
    windows: tuple[float, float] | None,
    folders: dict[Path, Path],
) -> int:
    """The top-k (or, with ``windows``, the timeline into ``folders[video]``) of each video."""
    from lateral.data.decode import DecodeError
    from lateral.engine.loading import load_model, load_run_config, read_label_names
    from lateral.engine.predict import predict_timeline, predict_video, video_pipeline, write_timeline
    from lateral.textfile import printable

    cfg = load_run_config(config_path, args.cfg_options)
    on_unsupported = "warn" if args.force_bf16 else ("fp32" if args.fallback_fp32 else "error")
    model, device = load_model(
        cfg,
        checkpoint,
        device=args.device,
        eager=args.eager,
        precision=args.precision,
        compile=args.compile,
        backend=args.backend,
        on_unsupported=on_unsupported,
    )
    pipeline = video_pipeline(cfg)
    # a recognizer or its lateral.optimize copy (nn.Module types attributes as Tensor | Module)
    names = read_label_names(args.labels, cfg, cast(int, model.num_classes))
    several = len(videos) > 1
    results, failed = [], []
    for video in videos:
        if several:
            print(f"== {video}")
        try:
            if windows:
                rows = predict_timeline(model, pipeline, video, *windows, device)
                paths = write_timeline(rows, names, folders[video], args.topk, overwrite=args.overwrite)
                for row in rows:
                    best = int(row.probs.argmax())
                    print(
                        f"{row.start_s:7.2f}-{row.end_s:7.2f}s  {printable(names[best]):<30} "
                        f"{float(row.probs[best]):.3f}"
                    )
                print(f"timeline written to {paths['csv']}, {paths['json']}, {paths['png']}")
                continue
            probs = predict_video(model, pipeline, video, device)
        except (DecodeError, FileNotFoundError) as err:  # a broken link in a folder is missing, not undecodable
            if not several:
                raise
            print(f"skipped: {err}", file=sys.stderr)
            failed.append(str(video))
            continue
        top = probs.topk(min(args.topk, len(probs)))
        result: list[dict[str, Any]] = [
            {"label": names[int(i)], "class": int(i), "prob": round(float(p), 6)}
            for p, i in zip(top.values, top.indices)
        ]
        for r in result:
            print(f"{r['prob']:.4f}  {printable(r['label'])}")  # the JSON keeps the name as written
        results.append({"video": str(video), "top": result})
    if args.out and not args.window:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        try:  # 'x' creates the file only if no other process has meanwhile
            with open(args.out, "w" if args.overwrite else "x") as handle:
                handle.write(json.dumps(results if several else results[0], indent=1))
        except FileExistsError:
            raise FileExistsError(_exists_message(args.out)) from None
    if failed:
        print(f"{len(failed)} of {len(videos)} videos could not be decoded: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- demo


def run_demo(args: argparse.Namespace) -> int:
    from lateral.engine.demo import run_demo as demo

    # the demo ends with its own short summary; the full metrics are in its report folder
    demo(out_dir=args.out, epochs=args.epochs, quick=args.quick, progress=not args.no_progress)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``test``, ``predict`` and ``demo``."""
    p = subparsers.add_parser("train", help="train a recognizer from a config (torchrun -m lateral train for DDP)")
    p.add_argument("config")
    p.add_argument("--work-dir", help="where checkpoints and logs go (default work_dirs/CONFIG_NAME)")
    p.add_argument("--resume", nargs="?", const="auto", help="'auto' (latest.pth in work dir) or a checkpoint path")
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], help="mixed precision (bf16 on CPU; fp16/bf16 on GPU)")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="model and clips in channels_last_3d (the config key channels_last=True); faster with --amp",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    add_cfg_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("test", help="evaluate a checkpoint: top-1/top-5, mean class accuracy, confusion matrix")
    p.add_argument(
        "config", help="config file (.py), or a checkpoint that carries its config (then CHECKPOINT may be left out)"
    )
    p.add_argument("checkpoint", nargs="?", help="the weights to test (default: CONFIG, when it is a checkpoint)")
    p.add_argument("--views", help="CROPSxCLIPS, e.g. 3x10 (3 crops of 10 clips)")
    p.add_argument("--out", help="folder for metrics.json and the confusion matrix (default: next to the checkpoint)")
    p.add_argument("--labels", help="label map text file, one class name per line")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--max-testing-views", type=positive_int, help="views per backbone call (bounds memory)")
    p.add_argument("--amp", choices=["bf16", "fp16", "none"])
    p.add_argument("--device")
    add_cfg_options(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_test)

    p = subparsers.add_parser("predict", help="top-k classes of a video, or a timeline over a long video")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="CONFIG CKPT VIDEO [VIDEO ...], or CKPT VIDEO [VIDEO ...] (a checkpoint that carries its "
        "config); a folder stands for its video files",
    )
    p.add_argument("--labels", help="label map text file, one class name per line")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--window", help="window length for a timeline, e.g. 2s")
    p.add_argument("--stride", help="step between windows, e.g. 1s (default: half the window)")
    p.add_argument(
        "--out",
        help="JSON file for the top-k, a list for several videos; with --window the timeline "
        f"folder (several videos: a folder per video in it; default {DEFAULT_PREDICTIONS_DIR}/)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier run at --out (without it an existing output is refused)",
    )
    p.add_argument("--precision", default="fp32", help="fp32 or bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile the inference copy")
    p.add_argument(
        "--backend",
        choices=["torch", "openvino"],
        default="torch",
        help="what runs the backbone of the inference copy (openvino: pip install 'lateral-vision[openvino]'; "
        "lateral bench --openvino says which is faster here)",
    )
    p.add_argument(
        "--eager",
        action="store_true",
        help="run the model as built instead of the optimised inference copy (BN folded, channels-last)",
    )
    p.add_argument("--fallback-fp32", action="store_true", help="without native bf16, run fp32 instead of failing")
    p.add_argument("--force-bf16", action="store_true", help="run bf16 even without native bf16 (very slow)")
    p.add_argument("--device")
    add_cfg_options(p)
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser(
        "demo", help="generate motion videos, train a small SlowFast on CPU, test, predict, report"
    )
    p.add_argument("--out", default="lateral_demo", help="folder for the data, checkpoints and the report")
    p.add_argument("--epochs", type=positive_int, default=None, help="override the demo's number of epochs")
    p.add_argument("--quick", action="store_true", help="a much smaller run (seconds), for smoke tests")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_demo)
