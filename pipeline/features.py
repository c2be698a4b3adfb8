"""DVC stages `features@<method>` and `anchor_features@<raw|random>`: an encoder's frozen clip
features on both sides of a split, written once to a `.npz` (slim.evaluation.feature_file) that
every frozen protocol (`slim evaluate --features`) reads, so the encoder runs over the data once.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.evaluate import load_eval_data, parse_encoder, split_features, torch_threads
from pipeline.params import DEFAULT_PARAMS, load_profile
from slim.evaluation import save_features


def run(
    encoder: str,
    split_path: Path,
    data_path: Path,
    out_path: Path,
    *,
    profile: str | None = None,
    params_path: Path = DEFAULT_PARAMS,
    progress: bool = False,
) -> dict:
    """Write the features of `encoder` (a pretrained encoder.pt, `raw` or `random[:method]`); return a
    summary."""
    start = time.perf_counter()
    spec = parse_encoder(encoder)
    if spec.kind == "supervised":
        raise ValueError(
            "`supervised` is trained from scratch per fine-tuning protocol: it has no frozen features"
        )
    _, settings = load_profile(params_path, "evaluate", profile)
    data = load_eval_data(split_path, data_path)
    with torch_threads(settings.threads):
        features = split_features(spec, data, settings, params_path, progress)
    save_features(features, out_path)
    return {
        "encoder": features.encoder,
        "split": features.split,
        "layout": features.layout,
        "num_train": len(features.train_ids),
        "num_test": len(features.test_ids),
        "dim": features.train.shape[1],
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
