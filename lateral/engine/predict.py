"""Prediction on video files: top-k classes for a whole video, or a timeline over sliding windows."""

from __future__ import annotations

import copy
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from lateral.config import ConfigError
from lateral.data import build_pipeline
from lateral.engine.evaluate import prepare_inputs, require_class_scores
from lateral.errors import InputError

if TYPE_CHECKING:
    from lateral.models.recognizer import Recognizer3D

__all__ = [
    "set_test_views",
    "video_pipeline",
    "predict_video",
    "predict_timeline",
    "write_timeline",
    "timeline_classes",
    "parse_seconds",
]

_CROP_STEPS = {"CenterCrop": 1, "ThreeCrop": 3, "TenCrop": 10}


def set_test_views(pipeline: list[dict], num_crops: int, num_clips: int) -> list[dict]:
    """A copy of a test pipeline that takes ``num_clips`` clips and ``num_crops`` (1, 3 or 10) crops of each."""
    if num_crops not in (1, 3, 10):
        raise ConfigError(f"--views CROPSxCLIPS: crops must be 1, 3 or 10, got {num_crops}")
    pipeline = copy.deepcopy(pipeline)
    sample = [s for s in pipeline if s.get("type") in ("SampleFrames", "DenseSampleFrames", "UniformSample")]
    if not sample:
        raise ConfigError("the test pipeline has no SampleFrames step to set the number of clips on")
    sample[0]["num_clips"] = num_clips
    sample[0]["test_mode"] = True
    crop_type = {1: "CenterCrop", 3: "ThreeCrop", 10: "TenCrop"}[num_crops]
    short_side = None  # of the last Resize(scale=(-1, S)) before the crop
    for step in pipeline:
        scale = step.get("scale")
        if step.get("type") == "Resize" and isinstance(scale, (list, tuple)) and len(scale) == 2 and scale[0] == -1:
            short_side = scale[1]
        if step.get("type") in _CROP_STEPS:
            size = step.get("crop_size", 224)
            if crop_type == "ThreeCrop" and step.get("type") != "ThreeCrop" and short_side is not None:
                size = short_side  # three crops span the short side, as in mmaction2's 3-crop test configs
            step.clear()
            step.update(type=crop_type, crop_size=size)
            break
    else:
        raise ConfigError("the test pipeline has no CenterCrop/ThreeCrop/TenCrop step to set the number of crops on")
    return pipeline


def video_pipeline(cfg: dict) -> list[dict]:
    """The pipeline used for prediction: the config's ``test_pipeline``, else ``val_pipeline``."""
    for key in ("test_pipeline", "val_pipeline"):
        if cfg.get(key):
            return list(cfg[key])
    for key in ("test_dataloader", "val_dataloader"):
        dataset = (cfg.get(key) or {}).get("dataset") or {}
        if dataset.get("pipeline"):
            return list(dataset["pipeline"])
    raise ConfigError("the config has no test_pipeline / val_pipeline to preprocess a video with")


def _split_init(pipeline: list[dict]) -> tuple[list[dict], list[dict]]:
    """(decoder init steps, the rest): windows need ``total_frames`` known before sampling."""
    for i, step in enumerate(pipeline):
        if step.get("type", "").endswith("Init"):
            return pipeline[: i + 1], pipeline[i + 1 :]
    return [], pipeline


def _clips_for(results: dict, steps) -> torch.Tensor:
    results = steps(results)
    inputs = results.get("inputs", results.get("imgs"))
    inputs = torch.as_tensor(inputs)
    if inputs.dim() != 5:
        raise InputError(
            "the pipeline must end with clips [V, C, T, H, W] (FormatShape + PackActionInputs), got "
            f"{list(inputs.shape)}"
        )
    return inputs


@torch.no_grad()
def _probabilities(model: nn.Module, clips: torch.Tensor, device: torch.device) -> torch.Tensor:
    require_class_scores(model, "prediction")
    inputs = prepare_inputs(clips.unsqueeze(0), model, device)
    # a bf16 model comes from lateral.optimize, which runs its backbone in bf16 itself: no autocast here
    scores = cast("Recognizer3D", model).predict(inputs)  # or its lateral.optimize copy
    if scores.dim() == 3:
        scores = scores.mean(dim=1)
    scores = scores.float()[0]
    if model.average_clips != "prob":  # report probabilities whatever the averaging
        scores = torch.sigmoid(scores) if getattr(model.cls_head, "multi_class", False) else scores.softmax(0)
    return scores.cpu()


def predict_video(
    model: nn.Module,
    pipeline: list[dict],
    video: str | Path,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Class probabilities [K] for a whole video, averaged over the pipeline's views.

    ``model`` may be a recognizer or its :func:`lateral.optimize` copy (fused, bf16, compiled).
    """

    device = device or torch.device("cpu")
    if not Path(video).is_file():
        raise FileNotFoundError(f"video not found: {video}")
    steps = build_pipeline(pipeline)
    clips = _clips_for({"filename": str(video), "start_index": 0, "modality": "RGB", "label": -1}, steps)
    return _probabilities(model, clips, device)


@dataclass
class TimelineRow:
    start_s: float
    end_s: float
    probs: torch.Tensor


def parse_seconds(text: str) -> float:
    """``'2s'``, ``'1.5'``, ``'500ms'`` -> seconds."""
    text = text.strip().lower()
    try:
        if text.endswith("ms"):
            seconds = float(text[:-2]) / 1000
        else:
            seconds = float(text[:-1]) if text.endswith("s") else float(text)
    except ValueError:
        raise ConfigError(f"a duration is written like 2s, 1.5 or 500ms, got '{text}'") from None
    if not math.isfinite(seconds):
        raise ConfigError(f"a duration must be a finite number of seconds, got '{text}'")
    return seconds


def predict_timeline(
    model: nn.Module,
    pipeline: list[dict],
    video: str | Path,
    window_s: float,
    stride_s: float,
    device: torch.device | None = None,
) -> list[TimelineRow]:
    """Probabilities for windows of ``window_s`` seconds every ``stride_s`` seconds over a long video."""

    if window_s <= 0 or stride_s <= 0:
        raise ConfigError("--window and --stride must be positive")
    device = device or torch.device("cpu")
    if not Path(video).is_file():
        raise FileNotFoundError(f"video not found: {video}")
    init_steps, rest = _split_init(pipeline)
    init = build_pipeline(init_steps)
    rest_steps = build_pipeline(rest)
    base = init({"filename": str(video), "start_index": 0, "modality": "RGB", "label": -1})
    if base is None:  # a step that returns None ends a pipeline with nothing
        raise InputError(f"the pipeline's init steps returned nothing for {video}")
    total = int(base["total_frames"])
    fps = float(base.get("avg_fps") or base.get("fps") or 30.0)
    window = max(1, round(window_s * fps))
    stride = max(1, round(stride_s * fps))
    rows = []
    start = 0
    while True:
        length = min(window, total - start)
        results = dict(base, total_frames=length, start_index=base.get("start_index", 0) + start)
        clips = _clips_for(results, rest_steps)
        rows.append(TimelineRow(start / fps, (start + length) / fps, _probabilities(model, clips, device)))
        if start + window >= total or start + stride >= total:  # the next window would start past the end
            break
        start += stride
    return rows


def write_timeline(
    rows: list[TimelineRow], class_names: list[str], out_dir: str | Path, topk: int = 5, overwrite: bool = False
) -> dict:
    """Write ``timeline.csv``, ``timeline.json`` and ``timeline.png`` into ``out_dir`` (created if missing).

    The plot draws every class that is among the ``topk`` of at least one window, so a class that leads anywhere
    has its line, named in the legend.

    Raises:
        FileExistsError: one of the three files exists already and ``overwrite`` is False (another run's output).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / f"timeline.{kind}" for kind in ("csv", "json", "png")}
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist (an earlier run's timeline); write elsewhere, or "
            "pass overwrite=True (--overwrite) to replace them"
        )
    mode = "w" if overwrite else "x"  # 'x': a file another process created meanwhile is refused, not clobbered
    names = class_names or [str(i) for i in range(len(rows[0].probs))]
    with open(paths["csv"], mode, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["start_s", "end_s", "top1", "top1_prob"] + names)
        for r in rows:
            top = int(r.probs.argmax())
            writer.writerow(
                [f"{r.start_s:.3f}", f"{r.end_s:.3f}", names[top], f"{float(r.probs[top]):.4f}"]
                + [f"{float(p):.4f}" for p in r.probs]
            )
    records = [
        {
            "start_s": r.start_s,
            "end_s": r.end_s,
            "top": [
                {"label": names[int(i)], "prob": float(r.probs[i])} for i in r.probs.topk(min(topk, len(names))).indices
            ],
        }
        for r in rows
    ]
    with open(paths["json"], mode) as handle:
        handle.write(json.dumps(records, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = torch.stack([r.probs for r in rows])  # [W, K]
    plotted = timeline_classes(probs, topk)
    centres = [(r.start_s + r.end_s) / 2 for r in rows]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    palette = plt.get_cmap("tab10" if len(plotted) <= 10 else "tab20")
    for i, k in enumerate(plotted):  # past 20 lines the colours repeat with another line style
        ax.plot(
            centres,
            probs[:, k].numpy(),
            marker="o",
            markersize=3,
            label=names[k],
            color=palette(i % 20),
            linestyle=("-", "--", ":")[i // 20 % 3],
        )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    # many classes: the legend goes beside the plot rather than over the lines
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(plotted) // 16)
    ax.set_title(f"class probability over time (classes in the top {min(topk, probs.shape[1])} of any window)")
    fig.tight_layout()
    with open(paths["png"], mode + "b") as handle:
        fig.savefig(handle, format="png", dpi=100, bbox_inches="tight")  # the legend beside the axes included
    plt.close(fig)
    return {kind: str(path) for kind, path in paths.items()}


def timeline_classes(probs: torch.Tensor, topk: int) -> list[int]:
    """probs: [W, K] per window -> the classes among the ``topk`` of at least one window, highest peak first."""
    k = min(topk, probs.shape[1])
    chosen = torch.unique(probs.topk(k, dim=1).indices)
    peaks = probs.max(dim=0).values[chosen]
    return chosen[peaks.argsort(descending=True, stable=True)].tolist()
