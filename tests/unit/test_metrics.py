"""Top-k, confusion matrix, per-class accuracy, PCA map and the two evaluation figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slim.evaluation.metrics import (
    confusion_matrix,
    pca_2d,
    per_class_accuracy,
    plot_confusion_matrix,
    plot_embedding,
    topk_accuracy,
)

SCORES = np.array(
    [
        [0.1, 0.7, 0.2],  # ranks 1, 2, 0
        [0.5, 0.3, 0.2],  # ranks 0, 1, 2
        [0.2, 0.2, 0.6],  # ranks 2, 0, 1 (tie broken by class index)
        [0.3, 0.4, 0.3],  # ranks 1, 0, 2
    ]
)
LABELS = np.array([1, 1, 1, 2])


def test_topk_accuracy_on_known_scores():
    assert topk_accuracy(SCORES, LABELS, 1) == 0.25
    assert topk_accuracy(SCORES, LABELS, 2) == 0.5
    assert topk_accuracy(SCORES, LABELS, 3) == 1.0
    assert topk_accuracy(torch.tensor(SCORES), torch.tensor(LABELS), 2) == 0.5  # tensors work too
    with pytest.raises(ValueError):
        topk_accuracy(SCORES, LABELS[:3], 1)


def test_confusion_matrix_and_per_class_accuracy():
    labels = [0, 0, 0, 1, 1, 3]
    predictions = [0, 1, 0, 1, 0, 3]
    cm = confusion_matrix(labels, predictions, 4)
    expected = np.array([[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    assert np.array_equal(cm, expected) and cm.dtype == np.int64
    acc = per_class_accuracy(labels, predictions, 4)
    np.testing.assert_allclose(acc[[0, 1, 3]], [2 / 3, 0.5, 1.0])
    assert np.isnan(acc[2])  # no test sample of class 2
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 4], [0, 1], 4)


def test_pca_2d_finds_the_directions_of_largest_variance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 2))
    q, _ = np.linalg.qr(a - a.mean(0))  # two exactly uncorrelated, centred signals
    x = np.full((200, 5), 7.0)
    x[:, 3] += 10 * q[:, 0]
    x[:, 1] += 3 * q[:, 1]
    p = pca_2d(x)
    assert p.shape == (200, 2) and p.dtype == np.float32
    np.testing.assert_allclose(np.abs(p[:, 0]), np.abs(10 * q[:, 0]), atol=1e-5)
    np.testing.assert_allclose(np.abs(p[:, 1]), np.abs(3 * q[:, 1]), atol=1e-5)


def test_figures_are_written_as_png(tmp_path):
    names = [f"action {i}" for i in range(10)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 300)
    cm = confusion_matrix(labels, np.where(rng.random(300) < 0.7, labels, rng.integers(0, 10, 300)), 10)
    features = rng.standard_normal((300, 16)) + labels[:, None]
    written = [
        plot_confusion_matrix(cm, names, tmp_path / "cm.png", title="kNN, NW-UCLA cross-view"),
        plot_embedding(pca_2d(features), labels, names, tmp_path / "sub" / "map.png"),
    ]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["cm.png", "map.png"]  # no temp left
    with pytest.raises(ValueError):
        plot_confusion_matrix(cm, names[:5], tmp_path / "bad.png")
