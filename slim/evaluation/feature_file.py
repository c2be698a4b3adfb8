"""Frozen clip features on disk: one `.npz` per encoder and split, computed once and shared by every
frozen protocol (linear probe, kNN), so no protocol runs the encoder over the dataset again.

Plain arrays only, read with `allow_pickle=False`: sample ids as unicode arrays, features float32,
and the provenance as strings. Written atomically.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slim.atomic import atomic_path

FORMAT_VERSION = 1
_KEYS = ("format_version", "encoder", "split", "layout", "train_ids", "train", "test_ids", "test")


@dataclass(frozen=True)
class SplitFeatures:
    """Features of both sides of a split, rows in the order of their ids."""

    encoder: str  # the name reports use: slim, mae, raw, random:slim, ...
    split: str
    layout: str
    train_ids: tuple[str, ...]
    train: torch.Tensor  # (N_train, D) float32
    test_ids: tuple[str, ...]
    test: torch.Tensor  # (N_test, D) float32

    def __post_init__(self) -> None:
        for side in ("train", "test"):
            rows, ids = getattr(self, side), getattr(self, f"{side}_ids")
            if rows.ndim != 2 or len(rows) != len(ids):
                raise ValueError(f"{side}: {len(ids)} ids but features of shape {tuple(rows.shape)}")
        if self.train.shape[1] != self.test.shape[1]:
            raise ValueError(
                f"train and test features differ in width: {self.train.shape[1]} vs {self.test.shape[1]}"
            )


def save_features(features: SplitFeatures, path: str | Path) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(
            handle,
            format_version=np.array(FORMAT_VERSION),
            encoder=np.array(features.encoder),
            split=np.array(features.split),
            layout=np.array(features.layout),
            train_ids=np.array(features.train_ids, dtype=str),
            train=features.train.numpy().astype(np.float32, copy=False),
            test_ids=np.array(features.test_ids, dtype=str),
            test=features.test.numpy().astype(np.float32, copy=False),
        )


def load_features(path: str | Path) -> SplitFeatures:
    """Read a features file; a clear error naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in _KEYS if key not in archive.files]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            if int(archive["format_version"]) != FORMAT_VERSION:
                raise ValueError(
                    f"format version {int(archive['format_version'])}, expected {FORMAT_VERSION}"
                )
            return SplitFeatures(
                encoder=str(archive["encoder"]),
                split=str(archive["split"]),
                layout=str(archive["layout"]),
                train_ids=tuple(archive["train_ids"].tolist()),
                train=torch.from_numpy(archive["train"].astype(np.float32, copy=False)),
                test_ids=tuple(archive["test_ids"].tolist()),
                test=torch.from_numpy(archive["test"].astype(np.float32, copy=False)),
            )
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a features file written by `slim features` ({exc})") from exc
