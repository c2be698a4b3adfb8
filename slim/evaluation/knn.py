"""Weighted k-nearest-neighbour classification on L2-normalised features (the DINO kNN protocol).

Each query takes its k most cosine-similar training samples; a neighbour votes for its class with
weight exp(sim / T), T = 0.07, normalised over the k neighbours (a softmax, so the class scores of a
query sum to one). Queries are processed in chunks, so memory is O(chunk_size x N_train).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slim.evaluation.metrics import topk_accuracy

DEFAULT_KS = (1, 20)
DEFAULT_TEMPERATURE = 0.07


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    ks: tuple[int, ...] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Per k, the (N_query, num_classes) weighted-vote class scores of every query (on the CPU).

    The search runs on the device of `train_features`. Features are L2-normalised here (a no-op for
    features that already are). Neighbours are found once for the largest k; smaller k use the
    first entries of that sorted list.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"knn: ks must be positive integers, got {ks}")
    if max(ks) > len(train_features):
        raise ValueError(f"knn: k={max(ks)} exceeds the {len(train_features)} training samples")
    gallery = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(gallery.device)
    k_max = max(ks)
    out = {k: [] for k in ks}
    for start in range(0, len(query_features), chunk_size):
        queries = F.normalize(query_features[start : start + chunk_size].to(gallery), dim=1)
        sim, index = (queries @ gallery.T).topk(k_max, dim=1)  # sorted, most similar first
        neighbour_labels = labels[index]
        for k in ks:
            weights = torch.softmax(sim[:, :k] / temperature, dim=1)
            scores = weights.new_zeros(len(queries), num_classes)
            out[k].append(scores.scatter_add_(1, neighbour_labels[:, :k], weights).cpu())
    empty = torch.zeros(0, num_classes)
    return {k: torch.cat(chunks) if chunks else empty for k, chunks in out.items()}


def knn_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ks: tuple[int, ...] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 1024,
) -> dict[int, dict[str, float]]:
    """Per k, {"top1": ..., "top5": ...} accuracies as fractions in [0, 1].

    "top5" is reported only when k >= 5 and there are more than 5 classes: with fewer voters the
    remaining ranks are ties at score zero and the figure means nothing.
    """
    scores = knn_scores(train_features, train_labels, test_features, num_classes, ks, temperature, chunk_size)
    result = {}
    for k, s in scores.items():
        result[k] = {"top1": topk_accuracy(s, test_labels, 1)}
        if k >= 5 and num_classes > 5:
            result[k]["top5"] = topk_accuracy(s, test_labels, 5)
    return result
