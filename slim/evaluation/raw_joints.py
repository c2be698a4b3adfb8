"""The "raw joints" anchor: kNN on the preprocessed joint coordinates themselves, no encoder.

A clip's feature is its cleaned skeleton (valid frames, most energetic bodies, centred on the
layout's centre joint at the first frame and, by default, rotated to the canonical view:
`slim.data.transforms.prepare_clip`) resampled to 32 frames and flattened; absent bodies are zeros.
Any learned encoder should beat kNN on these, under the same preparation as the encoder's input.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from slim.data.transforms import eval_clip, prepare_clip
from slim.evaluation.knn import DEFAULT_KS, knn_evaluate
from slim.layouts import Layout

RAW_FRAMES = 32


def raw_joint_features(
    clips: Iterable[np.ndarray],
    layout: Layout,
    frames: int = RAW_FRAMES,
    max_bodies: int = 1,
    normalise_view: bool = True,
) -> torch.Tensor:
    """(N, max_bodies * 3 * frames * J) float32 features from stored `(T, M, J, 3)` joint arrays."""
    rows = [
        eval_clip(prepare_clip(joints, layout, max_bodies, normalise_view), frames).reshape(-1)
        for joints in clips
    ]
    return torch.from_numpy(np.stack(rows))


def raw_joints_knn(
    train_clips: Iterable[np.ndarray],
    train_labels,
    test_clips: Iterable[np.ndarray],
    test_labels,
    layout: Layout,
    num_classes: int,
    ks: tuple[int, ...] = DEFAULT_KS,
    frames: int = RAW_FRAMES,
    max_bodies: int = 1,
    normalise_view: bool = True,
) -> dict[int, dict[str, float]]:
    """kNN accuracies (as `knn_evaluate`) of the raw-joint features, cosine similarity."""
    train = raw_joint_features(train_clips, layout, frames, max_bodies, normalise_view)
    test = raw_joint_features(test_clips, layout, frames, max_bodies, normalise_view)
    return knn_evaluate(
        train, torch.as_tensor(train_labels), test, torch.as_tensor(test_labels), num_classes, ks=ks
    )
