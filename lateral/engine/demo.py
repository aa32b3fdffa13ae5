"""``lateral demo``: the whole system on a fresh machine, no downloads.

1. Writes a synthetic motion dataset as real video files (classes differ only in how things move).
2. Trains a small SlowFast on it on the CPU.
3. Tests it with several views per video, predicts on held-out files.
4. Writes a report folder: metrics JSON, confusion matrix and training-curve PNGs, predictions, the config used.
"""

from __future__ import annotations

import json
import os
import pprint
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lateral.checkpoint import load_checkpoint
from lateral.config import load_config
from lateral.data.synthetic import MOTION_CLASSES, make_motion_dataset
from lateral.engine.evaluate import collect_scores
from lateral.engine.metrics import classification_metrics, save_confusion
from lateral.engine.predict import predict_video
from lateral.engine.train import build_loader, train
from lateral.registry import build_model

__all__ = ["write_demo_config", "format_summary", "run_demo"]

CLIP_LEN = 16
FRAME_INTERVAL = 2
CROP = 56
TEST_CLIPS = 3  # views per held-out video: 3 clips, one centre crop each


class _Source:
    """Config-file source written as is in place of a value: a name defined earlier in the file, or an f-string of
    one. ``pprint`` writes objects by their ``repr``."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _config_sections(data_root: Path, num_classes: int, epochs: int, batch_size: int) -> list[tuple[str, Any]]:
    """The demo's run config as (name, value) in file order: a thin SlowFast-R18 (beta = 1/2) on 16-frame 56x56
    clips of the motion videos. The dataloaders refer to ``data_root`` and the pipelines by name.

    No horizontal flip: left/right motion is what two of the classes are about.
    """
    mean, std = [127.5, 127.5, 127.5], [64.0, 64.0, 64.0]
    train_pipeline = [
        dict(type="PyAVInit"),
        dict(type="SampleFrames", clip_len=CLIP_LEN, frame_interval=FRAME_INTERVAL, num_clips=1),
        dict(type="PyAVDecode"),
        dict(type="RandomResizedCrop", area_range=(0.6, 1.0)),
        dict(type="Resize", scale=(CROP, CROP), keep_ratio=False),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="PackActionInputs"),
    ]
    test_pipeline = [
        dict(type="PyAVInit"),
        dict(
            type="SampleFrames", clip_len=CLIP_LEN, frame_interval=FRAME_INTERVAL, num_clips=TEST_CLIPS, test_mode=True
        ),
        dict(type="PyAVDecode"),
        dict(type="Resize", scale=(-1, 64)),
        dict(type="CenterCrop", crop_size=CROP),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="PackActionInputs"),
    ]

    def loader(ann_file: str, pipeline: str, train: bool) -> dict:
        dataset = dict(
            type="VideoDataset",
            ann_file=_Source(f"f'{{data_root}}/{ann_file}'"),
            data_prefix=dict(video=_Source("data_root")),
            pipeline=_Source(pipeline),
            test_mode=not train,
        )
        return dict(
            batch_size=batch_size, num_workers=1, **({"sampler": dict(shuffle=True)} if train else {}), dataset=dataset
        )

    model = dict(
        type="Recognizer3D",
        backbone=dict(
            type="ResNet3dSlowFast",
            resample_rate=4,
            speed_ratio=4,
            channel_ratio=2,  # a wide fast pathway: motion is all these classes are about
            slow_pathway=dict(
                type="resnet3d",
                depth=18,
                base_channels=16,
                lateral=True,
                conv1_kernel=(1, 7, 7),
                conv1_stride_t=1,
                pool1_stride_t=1,
                inflate=(0, 0, 1, 1),
            ),
            fast_pathway=dict(
                type="resnet3d",
                depth=18,
                base_channels=8,
                lateral=False,
                conv1_kernel=(5, 7, 7),
                conv1_stride_t=1,
                pool1_stride_t=1,
            ),
        ),
        cls_head=dict(type="SlowFastHead", in_channels=128 + 64, num_classes=num_classes, dropout_ratio=0.3),
        data_preprocessor=dict(type="ActionDataPreprocessor", mean=mean, std=std, format_shape="NCTHW"),
        test_cfg=dict(average_clips="prob"),
    )
    return [
        ("data_root", str(data_root)),
        ("label_map", _Source("f'{data_root}/label_map.txt'")),
        ("train_pipeline", train_pipeline),
        ("test_pipeline", test_pipeline),
        ("model", model),
        ("train_dataloader", loader("train_list.txt", "train_pipeline", train=True)),
        ("val_dataloader", loader("test_list.txt", "test_pipeline", train=False)),
        ("test_dataloader", loader("test_list.txt", "test_pipeline", train=False)),
        ("train_cfg", dict(max_epochs=epochs, val_interval=1, val_begin=1)),
        (
            "optim_wrapper",
            dict(
                optimizer=dict(type="AdamW", lr=4e-3, weight_decay=1e-4),
                paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
                clip_grad=dict(max_norm=10, norm_type=2),
            ),
        ),
        (
            "param_scheduler",
            [
                dict(type="LinearLR", start_factor=0.1, by_epoch=True, begin=0, end=1),
                dict(type="CosineAnnealingLR", T_max=epochs, eta_min=1e-5, by_epoch=True, begin=0, end=epochs),
            ],
        ),
        ("default_hooks", dict(logger=dict(interval=10), checkpoint=dict(interval=1, max_keep_ckpts=2))),
        ("randomness", dict(seed=0)),
    ]


def write_demo_config(path: str | Path, data_dir: str | Path, epochs: int, batch_size: int = 16) -> dict:
    """Write the demo's run config file for the motion dataset in ``data_dir`` and return it as read back.

    Each pipeline is written once and the dataloaders name it, so an edit to ``train_pipeline`` is what training
    uses; the data paths are absolute, so ``lateral test CONFIG CKPT`` works from any folder.
    """
    data_root = Path(data_dir).resolve()
    num_classes = len([line for line in (data_root / "label_map.txt").read_text().splitlines() if line.strip()])
    lines = [
        '"""The lateral demo run config (written by `lateral demo`).',
        "",
        "The data paths are absolute: `lateral test` and `lateral predict` read this file from any folder.",
        "The dataloaders use train_pipeline and test_pipeline by name: edit a pipeline here, not in a loader.",
        '"""',
        "",
    ]
    for name, value in _config_sections(data_root, num_classes, epochs, batch_size):
        if name == "val_dataloader":
            lines.append("# validation scores the held-out videos as the test does, after every epoch")
        lines.append(f"{name} = {pprint.pformat(value, width=110, sort_dicts=False)}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(path)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def format_summary(summary: dict) -> str:
    """The few lines ``lateral demo`` ends with; everything else is in the report folder's ``metrics.json``."""
    report = Path(summary["report_dir"])
    chance = 100 / len(summary["classes"])
    return "\n".join(
        [
            f"lateral demo: done in {_duration(summary['seconds_total'])} (data {_duration(summary['seconds_data'])}, "
            f"training {_duration(summary['seconds_train'])}, {_epochs(summary['epochs'])})",
            f"  held-out test: top-1 {100 * summary['top1_acc']:.1f} %, top-5 {100 * summary['top5_acc']:.1f} % "
            f"over {summary['test_videos']} videos x {summary['views_per_test_video']} views "
            f"({len(summary['classes'])} classes, chance {chance:.1f} %)",
            f"  report: {report}  (metrics.json, predictions.json, confusion_matrix.png, training_curve.png)",
            f"  test again: lateral test {report / 'demo_config.py'} {summary['checkpoint']}",
        ]
    )


def _training_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(epochs, [h.get("loss", float("nan")) for h in history], marker="o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    val = [(h["epoch"], h["val_top1_acc"]) for h in history if "val_top1_acc" in h]
    if val:
        ax2 = ax.twinx()
        ax2.plot([v[0] for v in val], [v[1] for v in val], marker="s", color="tab:green", label="val top-1")
        ax2.set_ylabel("val top-1")
        ax2.set_ylim(0, 1.05)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("lateral demo: training curve")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(
    out_dir: str | Path = "lateral_demo", epochs: int | None = None, quick: bool = False, progress: bool = True
) -> dict:
    """Run the demo end to end, saying what it does on stderr and ending with :func:`format_summary` on stdout;
    return ``{'summary': {...}, 'report_dir': ...}`` (the summary is also the report's ``metrics.json``)."""

    started = time.time()
    # one core decodes (a DataLoader worker), the others compute: more threads than cores makes OpenMP spin
    num_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    torch.set_num_threads(max(1, num_cores - 1))
    out_dir = Path(out_dir).resolve()
    data_dir = out_dir / "data"
    report_dir = out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    per_class = (4, 2) if quick else (100, 15)
    print(f"writing {sum(per_class) * len(MOTION_CLASSES)} synthetic videos to {data_dir}", file=sys.stderr)
    make_motion_dataset(
        data_dir,
        num_train_per_class=per_class[0],
        num_test_per_class=per_class[1],
        num_frames=32,
        size=64,
        seed=0,
        progress=progress,
    )
    data_seconds = time.time() - started
    epochs = epochs or (1 if quick else 12)
    # the file is the source of truth: training reads it back, as `lateral train` would
    cfg = write_demo_config(report_dir / "demo_config.py", data_dir, epochs, batch_size=8)

    threads = torch.get_num_threads()
    print(
        f"training a small SlowFast for {_epochs(epochs)} on {threads} CPU thread{'' if threads == 1 else 's'}",
        file=sys.stderr,
    )
    train_started = time.time()
    result = train(cfg, out_dir / "work_dir", resume="auto", progress=progress)
    train_seconds = time.time() - train_started

    model = build_model(cfg["model"])
    best = result["best"] or result["latest"]
    load_checkpoint(model, best)
    model.eval()
    device = torch.device("cpu")
    loader = build_loader(cfg["test_dataloader"], train=False, seed=0, distributed=False, name="test_dataloader")
    scores, labels = collect_scores(model, loader, device, progress=progress)
    metrics = classification_metrics(scores, labels)
    names = [line.strip() for line in Path(cfg["label_map"]).read_text().splitlines() if line.strip()]
    save_confusion(metrics["confusion_matrix"], names, report_dir)
    _training_curve(result["history"], report_dir / "training_curve.png")

    first_per_class: dict[int, str] = {}
    for line in (data_dir / "test_list.txt").read_text().splitlines():
        rel, label = line.rsplit(" ", 1)
        first_per_class.setdefault(int(label), rel)
    predictions = []
    for class_index, rel in sorted(first_per_class.items()):
        probs = predict_video(model, cfg["test_pipeline"], data_dir / rel, device)
        top = int(probs.argmax())
        predictions.append(
            {"video": rel, "true": names[class_index], "predicted": names[top], "prob": round(float(probs[top]), 4)}
        )
    (report_dir / "predictions.json").write_text(json.dumps(predictions, indent=1))

    summary = {
        "classes": names,
        "train_videos": per_class[0] * len(names),
        "test_videos": int(len(labels)),
        "views_per_test_video": TEST_CLIPS,
        "epochs": epochs,
        "top1_acc": round(metrics["top1_acc"], 4),
        "top5_acc": round(metrics["top5_acc"], 4),
        "mean_class_accuracy": round(metrics["mean_class_accuracy"], 4),
        "seconds_data": round(data_seconds, 1),
        "seconds_train": round(train_seconds, 1),
        "seconds_total": round(time.time() - started, 1),
        "threads": torch.get_num_threads(),
        "report_dir": str(report_dir),
        "checkpoint": best,
        "predictions": predictions,
    }
    (report_dir / "metrics.json").write_text(
        json.dumps({**summary, "confusion_matrix": metrics["confusion_matrix"]}, indent=1)
    )
    print(format_summary(summary), flush=True)
    return {"summary": summary, "report_dir": str(report_dir)}
