"""DVC stage `pretrain@<method>`: pretrain an encoder on a protocol's training split (slim.train).

Reads the `pretrain` section of params.yaml, the split's train ids and the Parquet dataset, and
writes `encoder.pt`, `metrics.json`, `plots.csv` and `checkpoints/` into the output folder. Run it
under `torchrun --nproc_per_node N -m pipeline.cli pretrain ...` for DDP.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.params import DEFAULT_PARAMS, PretrainProfile, load_profile
from slim.data.dataset import load_training_clips
from slim.train import TrainConfig, pretrain


def train_config(profile: PretrainProfile, method: str) -> TrainConfig:
    """The run's TrainConfig: the profile's shared settings plus its `method` section."""
    shared = profile.model_dump(exclude={"slim", "mae"})
    return TrainConfig(method=method, **shared, **getattr(profile, method).model_dump())


def read_train_ids(split_path: Path) -> list[str]:
    try:
        split = json.loads(Path(split_path).read_text())
        return list(split["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{split_path}: not a split file with a `train` list ({exc})") from exc


def run(
    method: str,
    split_path: Path,
    data_path: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    profile: str | None = None,
    params_path: Path = DEFAULT_PARAMS,
    progress: bool = True,
) -> dict:
    """Pretrain `method` with the chosen profile; return the metrics (also written to metrics.json)."""
    config = train_config(load_profile(params_path, "pretrain", profile)[1], method)
    data = load_training_clips(data_path, read_train_ids(split_path))
    return pretrain(config, data, out_dir, resume=resume, progress=progress)
