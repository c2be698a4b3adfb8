"""Classification metrics (numpy) and the evaluation figures (matplotlib, imported lazily).

Accuracies are fractions in [0, 1]. Inputs may be numpy arrays or CPU torch tensors. Confusion
matrices have true classes in rows and predicted classes in columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slim.atomic import atomic_path


@dataclass
class ClassificationResult:
    """What a trained classifier scored on the test set: accuracies, predictions, training losses."""

    top1: float
    top5: float | None
    predictions: np.ndarray  # (N_test,) int64 predicted class per test sample
    loss_history: list[float] = field(default_factory=list)  # mean training loss per epoch


def topk_accuracy(scores, labels, k: int) -> float:
    """Fraction of rows whose true label is among the k highest scores (ties broken by class index)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"topk_accuracy: scores {scores.shape} and labels {labels.shape} do not match")
    if len(labels) == 0:
        return float("nan")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: entry [t, p] counts samples of class t predicted p."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"confusion_matrix: labels {labels.shape} vs predictions {predictions.shape}")
    for name, a in (("labels", labels), ("predictions", predictions)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} outside [0, {num_classes})")
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def per_class_accuracy(labels, predictions, num_classes: int) -> np.ndarray:
    """(num_classes,) recall of each class; NaN for a class with no test sample."""
    cm = confusion_matrix(labels, predictions, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def pca_2d(features) -> np.ndarray:
    """(N, 2) projection on the two leading principal components (centred features, via SVD).

    The library's embedding map; t-SNE needs scikit-learn, which `slim/` does not import.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:2].T).astype(np.float32)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
    normalize: bool = True,
) -> Path:
    """Write a confusion-matrix PNG (row-normalised to per-class recall when `normalize`)."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"plot_confusion_matrix: matrix {cm.shape} for {n} class names")
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.35 * n, 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(
        image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count"
    )
    ticks = np.arange(n)
    ax.set_xticks(
        ticks, labels=class_names, rotation=90 if n > 10 else 45, ha="right" if n <= 10 else "center"
    )
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= 20:
        for t in range(n):
            for p in range(n):
                if cm[t, p] > 0:
                    text = f"{cm[t, p]:.2f}" if normalize else f"{int(cm[t, p])}"
                    colour = "white" if cm[t, p] > 0.5 * cm.max() else "black"
                    ax.text(p, t, text, ha="center", va="center", fontsize=8, color=colour)
    return _save(fig, path)


def plot_embedding(
    points,
    labels,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Feature embedding (PCA)",
    axis_labels: tuple[str, str] = ("component 1", "component 2"),
) -> Path:
    """Write a 2-D scatter PNG of `points` (N, 2), one colour per class, with a legend.

    Pass `pca_2d(features)` or any other 2-D embedding (e.g. a t-SNE computed outside the library).
    """
    plt = _pyplot()
    points, labels = np.asarray(points), np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise ValueError(
            f"plot_embedding: need (N, 2) points and N labels, got {points.shape}, {labels.shape}"
        )
    n = len(class_names)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "turbo")
    fig, ax = plt.subplots(figsize=(9 if n <= 20 else 12, 7))
    for c in range(n):
        chosen = labels == c
        if chosen.any():
            colour = cmap(c if n <= 20 else c / max(n - 1, 1))
            ax.scatter(
                points[chosen, 0], points[chosen, 1], s=10, color=colour, label=class_names[c], alpha=0.8
            )
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    ncol = 1 if n <= 30 else 2
    ax.legend(
        loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=2, ncol=ncol, frameon=False
    )
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Save atomically (a reader never sees a half-written PNG) and free the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
