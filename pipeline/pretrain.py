"""DVC stage `pretrain@<method>`: pretrain an encoder on a protocol's training split (slim.train).

Reads the `pretrain` section of params.yaml, the split's train ids and the Parquet dataset, and
writes `encoder.pt`, `metrics.json`, `plots.csv`, `checkpoints/` and three figures into the output
folder: `loss.png` (losses, lr, throughput per step), `masking.png` (the method's token mask on a
real training clip) and, for SLiM, `views.png` (its skeletal augmentations on that clip). Run it
under `torchrun --nproc_per_node N -m pipeline.cli pretrain ...` for DDP.

Tracked as MLflow run `pretrain@<method>` (rank 0 only): the flattened profile as params, the
per-step columns of plots.csv as metric histories (`train/<column>`, SLiM's collapse monitor among
them: `train/teacher_cls_entropy` etc., fractions of ln K), metrics.json, the figures, `config.yaml`,
the run's settings with every default filled in, and for SLiM a tag `monitor.collapse` (ok | warned).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from pipeline import tracking
from pipeline.params import DEFAULT_PARAMS, PretrainProfile, load_profile
from pipeline.split import read_split
from slim.data.dataset import TrainingClips, load_training_clips
from slim.distributed import env_info
from slim.train import TrainConfig, config_from_dict, model_config, pretrain
from slim.views import ViewConfig
from slim.visualize import write_loss_curves, write_pretrain_figures

FIGURES = ("loss.png", "masking.png", "views.png")


def train_config(profile: PretrainProfile, method: str) -> TrainConfig:
    """The run's TrainConfig: the profile's shared settings plus its `method` section."""
    shared = profile.model_dump(exclude={"slim", "mae"})
    return TrainConfig(method=method, **shared, **getattr(profile, method).model_dump())


def resolved_config(config: TrainConfig, profile: str, num_joints: int) -> dict:
    """The run's settings with every default filled in (model, and SLiM's views), JSON-plain."""
    doc = {
        "profile": profile,
        "train": asdict(config),
        "model": asdict(model_config(config.method, config.model, num_joints, config.normalise_view)),
    }
    if config.method == "slim":
        doc["views"] = asdict(config_from_dict(ViewConfig, config.views, "views"))
    return json.loads(json.dumps(doc))


def write_figures(config: TrainConfig, data: TrainingClips, out_dir: Path) -> list[Path]:
    """loss.png, and masking.png (views.png for SLiM) on the first training clip, seeded by the run."""
    generator = torch.Generator().manual_seed(config.seed)
    name = f"{config.method} on {data.sample_ids[0]}"
    if config.method == "slim":
        views = config_from_dict(ViewConfig, config.views, "views")
        policy = views.global_mask
        masking = {
            "frames": views.global_frames,
            "patch_size": views.patch_size,
            "mask_ratio": sum(policy.ratio_range) / 2,
            "mask_kind": policy.kind,
            "min_time": policy.min_time,
            "augment": views.augment,
        }
    else:
        cfg = model_config("mae", config.model, data.layout.num_joints)
        masking = {
            "frames": cfg.num_frames,
            "patch_size": cfg.patch_size,
            "mask_ratio": cfg.mask_ratio,
            "mask_kind": "random",
        }
    figures = write_pretrain_figures(data.clips[0], data.layout, out_dir, generator, name=name, **masking)
    return [
        write_loss_curves(out_dir / "plots.csv", out_dir / "loss.png", f"pretrain {config.method}"),
        *figures,
    ]


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
    profile_name, settings = load_profile(params_path, "pretrain", profile)
    config = train_config(settings, method)
    split = read_split(split_path)
    out_dir = Path(out_dir)
    params = {
        "profile": profile_name,
        "method": method,
        **settings.model_dump(mode="json", exclude={"slim", "mae"} - {method}),
    }
    with tracking.stage_run(
        f"pretrain@{method}",
        dataset=split["dataset"],
        params=params,
        data_path=data_path,
        params_path=params_path,
    ) as active:
        data = load_training_clips(data_path, split["train"], config.normalise_view)
        metrics = pretrain(config, data, out_dir, resume=resume, progress=progress)
        if env_info().is_main:
            write_figures(config, data, out_dir)
        if active is not None:
            tracking.log_step_metrics(out_dir / "plots.csv")
            tracking.log_metrics_file(out_dir / "metrics.json")
            tracking.log_text(
                yaml.safe_dump(
                    resolved_config(config, profile_name, data.layout.num_joints), sort_keys=False
                ),
                "config.yaml",
            )
            tracking.log_artifacts(
                [out_dir / "metrics.json", out_dir / "plots.csv", *(out_dir / f for f in FIGURES)]
            )
            if method == "slim":  # the collapse monitor's verdict in the runs table (warnings: metrics.json)
                tracking.set_tags({"monitor.collapse": "warned" if metrics["collapse_warnings"] else "ok"})
    return metrics
