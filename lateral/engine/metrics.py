"""Classification metrics: top-k accuracy, mean class accuracy, confusion matrix (and its plot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["top_k_accuracy", "mean_class_accuracy", "confusion_matrix", "classification_metrics", "save_confusion"]


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


def classification_metrics(scores: np.ndarray, labels: np.ndarray, topk: tuple[int, ...] = (1, 5)) -> dict:
    """scores: [N, K]; labels: [N] -> top-k accuracies, mean class accuracy, confusion matrix."""
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores [N, K] and labels [N] must agree, got {scores.shape} and {labels.shape}")
    num_classes = scores.shape[1]
    matrix = confusion_matrix(scores.argmax(axis=1), labels, num_classes)
    metrics: dict = {f"top{k}_acc": acc for k, acc in top_k_accuracy(scores, labels, topk).items()}
    metrics["mean_class_accuracy"] = mean_class_accuracy(matrix)
    metrics["num_samples"] = int(len(labels))
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
