"""Classification metrics: top-k accuracy, mean class accuracy, confusion matrix (and its plot), mean AP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lateral.errors import InputError

__all__ = [
    "top_k_accuracy",
    "mean_class_accuracy",
    "confusion_matrix",
    "average_precision",
    "mean_average_precision",
    "classification_metrics",
    "save_confusion",
]


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, topk: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """scores: [N, K]; labels: [N] -> {k: fraction of samples whose label is among the k highest scores}.

    Ties are broken by class index (a stable descending sort), as mmaction2's ``top_k_accuracy`` does.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {}
    for k in topk:
        hits = (order[:, : min(k, scores.shape[1])] == labels[:, None]).any(axis=1)
        out[k] = float(hits.mean()) if len(labels) else 0.0
    return out


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, pred), 1)
    return matrix


def mean_class_accuracy(matrix: np.ndarray) -> float:
    """Mean over classes that occur of (correct / occurrences)."""
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float((np.diag(matrix)[present] / support[present]).mean())


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """scores: [N]; targets: [N] in {0, 1} -> area under the precision-recall curve (NaN without positives).

    The sum over score thresholds of precision x recall step, thresholds taken at distinct scores (tied scores
    enter together), as scikit-learn's ``average_precision_score`` and mmaction2's ``mean_average_precision``.
    """
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_targets = scores[order], targets[order]
    true_pos = np.cumsum(sorted_targets)
    # the last index of each run of equal scores is where a threshold cuts
    cut = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    precision = true_pos[cut] / (cut + 1)
    recall = true_pos[cut] / positives
    recall_steps = np.diff(np.r_[0.0, recall])
    return float((recall_steps * precision).sum())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """scores: [N, K]; targets: [N, K] multi-hot -> mean over classes that have positives of their AP."""
    per_class = [average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])]
    present = [ap for ap in per_class if not np.isnan(ap)]
    return float(np.mean(present)) if present else 0.0


def classification_metrics(scores: np.ndarray, labels: np.ndarray, topk: tuple[int, ...] = (1, 5)) -> dict:
    """scores: [N, K]; labels: [N] class indices, or [N, K] multi-hot for multi-label data.

    Single-label: top-k accuracies, mean class accuracy and the confusion matrix, over the labelled samples;
    samples labelled -1 (a test list without labels) are left out and counted in ``num_unlabelled``.
    Multi-label: ``mean_average_precision``.

    Raises:
        ValueError: shapes that disagree, or a label outside ``0 .. K - 1``.
    """
    if scores.ndim != 2 or len(scores) != len(labels):
        raise InputError(f"scores [N, K] and labels [N] must agree, got {scores.shape} and {labels.shape}")
    num_classes = scores.shape[1]
    if labels.ndim == 2:
        if labels.shape != scores.shape:
            raise InputError(f"multi-label targets must be [N, {num_classes}] like the scores, got {labels.shape}")
        return {"mean_average_precision": mean_average_precision(scores, labels), "num_samples": int(len(labels))}
    labels = labels.astype(np.int64)
    labelled = labels >= 0
    out_of_range = sorted(set(labels[labels >= num_classes].tolist()) | set(labels[labels < -1].tolist()))
    if out_of_range:
        raise InputError(
            f"labels {out_of_range[:10]} are outside 0..{num_classes - 1}: the model scores "
            f"{num_classes} classes (-1 marks an unlabelled sample)"
        )
    scores, labels = scores[labelled], labels[labelled]
    matrix = confusion_matrix(scores.argmax(axis=1), labels, num_classes)
    metrics: dict = {f"top{k}_acc": acc for k, acc in top_k_accuracy(scores, labels, topk).items()}
    metrics["mean_class_accuracy"] = mean_class_accuracy(matrix)
    metrics["num_samples"] = int(len(labels))
    metrics["num_unlabelled"] = int((~labelled).sum())
    metrics["confusion_matrix"] = matrix.tolist()
    return metrics


def save_confusion(matrix: np.ndarray, class_names: list[str] | None, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``confusion_matrix.json`` and ``confusion_matrix.png`` (row-normalised heat map) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = np.asarray(matrix)
    names = class_names or [str(i) for i in range(len(matrix))]
    json_path = out_dir / "confusion_matrix.json"
    json_path.write_text(json.dumps({"classes": names, "matrix": matrix.tolist()}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 40:
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                if matrix[i, j]:
                    colour = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    png_path = out_dir / "confusion_matrix.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path
