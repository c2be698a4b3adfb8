"""`params.yaml` -> validated, typed configuration (unknown keys and bad values are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.paths import REPO_ROOT
from slim.data.splits import get_protocol

DEFAULT_PARAMS = REPO_ROOT / "params.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetParams(_Strict):
    format: Literal["ntu", "nw-ucla", "npz"]
    raw: str = Field(description="folder of raw files, relative to the repo root")


class IngestParams(_Strict):
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    workers: int = Field(0, ge=0, description="parsing processes; 0 = one per core")


Pair = tuple[float, float]


class SLiMPretrainParams(_Strict):
    steps: int = Field(gt=0, description="optimiser steps")
    momentum: Pair = Field((0.994, 1.0), description="teacher EMA momentum, cosine start -> end")
    teacher_temp: Pair = Field((0.04, 0.07), description="teacher temperature, linear warm-up start -> end")
    teacher_temp_warmup: float = Field(0.2, ge=0.0, le=1.0, description="share of the steps the warm-up takes")
    freeze_last_layer_steps: int = Field(0, ge=0, description="steps with the prototype layers' lr at 0")
    model: dict[str, Any] = Field(default_factory=dict, description="SLiMConfig overrides (encoder: {...})")
    views: dict[str, Any] = Field(default_factory=dict, description="ViewConfig overrides")


class MAEPretrainParams(_Strict):
    steps: int = Field(gt=0, description="optimiser steps")
    model: dict[str, Any] = Field(default_factory=dict, description="MAEConfig overrides")


class PretrainProfile(_Strict):
    """One pretraining setting for both methods; `slim pretrain --profile NAME` picks it."""

    seed: int = 0
    batch_size: int = Field(gt=0, description="global batch, split over DDP processes")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="CUDA only; CPU runs fp32")
    threads: int = Field(0, ge=0, description="torch threads per process; 0 = one per core")
    num_workers: int = Field(0, ge=0, description="data-loading processes")
    normalise_view: bool = Field(True, description="rotate clips to the canonical view (spine up, hips along x)")
    pad_frames: int = Field(0, ge=0, description="ping-pong pad shorter training clips to this; 0 = never")
    checkpoint_every: int = Field(100, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    lr: float = Field(2e-4, gt=0, description="peak lr at batch 1024, scaled by sqrt(batch/1024)")
    final_lr: float = Field(1e-6, ge=0)
    weight_decay: Pair = Field((0.04, 0.2), description="cosine start -> end")
    clip_grad: float = Field(3.0, gt=0)
    slim: SLiMPretrainParams
    mae: MAEPretrainParams

    @model_validator(mode="after")
    def _model_overrides_are_valid(self) -> PretrainProfile:
        from slim.train import config_from_dict, model_config
        from slim.views import ViewConfig

        model_config("slim", self.slim.model, num_joints=25)
        model_config("mae", self.mae.model, num_joints=25)
        config_from_dict(ViewConfig, self.slim.views, "views")
        return self


class PretrainParams(_Strict):
    profile: str = Field(description="the profile the DVC stage `pretrain` runs")
    profiles: dict[str, PretrainProfile]

    @model_validator(mode="after")
    def _profile_exists(self) -> PretrainParams:
        if self.profile not in self.profiles:
            raise ValueError(f"pretrain.profile {self.profile!r} is not in pretrain.profiles ({', '.join(self.profiles)})")
        return self


FrozenProtocol = Literal["linear", "knn"]
FinetuneProtocol = Literal["semi1", "semi10", "finetune"]


class SemiParams(_Strict):
    fraction: float = Field(gt=0.0, lt=1.0, description="share of the training labels (class-balanced, seeded)")
    epochs: int = Field(gt=0, description="fine-tuning epochs on the subset (replaces `finetune.epochs`)")


class EvaluateProfile(_Strict):
    """Settings of every protocol; `slim evaluate --profile NAME` picks one."""

    seed: int = Field(0, description="probe/head init, shuffling, label subsets, random-init anchors, t-SNE")
    threads: int = Field(0, ge=0, description="torch threads; 0 = one per core")
    batch_size: int = Field(128, gt=0, description="clips per forward pass when extracting features")
    knn_ks: tuple[int, ...] = Field((1, 20), min_length=1, description="neighbours; the first is the headline")
    knn_temperature: float = Field(0.07, gt=0)
    linear: dict[str, Any] = Field(default_factory=dict, description="LinearProbeConfig overrides")
    finetune: dict[str, Any] = Field(default_factory=dict, description="FinetuneConfig overrides")
    semi1: SemiParams
    semi10: SemiParams

    @model_validator(mode="after")
    def _overrides_are_valid(self) -> EvaluateProfile:
        from slim.evaluation import FinetuneConfig, LinearProbeConfig
        from slim.train import config_from_dict

        if min(self.knn_ks) < 1:
            raise ValueError(f"knn_ks must be positive, got {self.knn_ks}")
        for name, cls in (("linear", LinearProbeConfig), ("finetune", FinetuneConfig)):
            overrides = getattr(self, name)
            if "seed" in overrides:
                raise ValueError(f"evaluate {name}: set `seed` once, at the profile level")
            config_from_dict(cls, overrides, f"evaluate.{name}")
        return self


class EvaluateDag(_Strict):
    """Which evaluations `dvc repro` runs (dvc.yaml's evaluate stages expand these lists)."""

    methods: list[Literal["slim", "mae"]] = Field(
        min_length=1, description="methods pretrained (pretrain@<method>) and evaluated, models/<method>/encoder.pt"
    )
    frozen: list[FrozenProtocol] = Field(description="protocols of every method and of the frozen anchors")
    anchors: list[Literal["raw", "random"]] = Field(
        ["raw", "random"], description="frozen-feature anchors: raw joint coordinates, a random-init encoder"
    )
    finetuned: list[FinetuneProtocol] = Field(description="protocols of `finetuned_methods` and the supervised anchor")
    finetuned_methods: list[Literal["slim", "mae"]] = Field(description="methods fine-tuned under `finetuned`")


class EvaluateParams(_Strict):
    profile: str = Field(description="the profile the DVC evaluate stages run")
    dag: EvaluateDag
    profiles: dict[str, EvaluateProfile]

    @model_validator(mode="after")
    def _profile_exists(self) -> EvaluateParams:
        if self.profile not in self.profiles:
            raise ValueError(f"evaluate.profile {self.profile!r} is not in evaluate.profiles ({', '.join(self.profiles)})")
        return self


class RegistryParams(_Strict):
    """MLflow model registry (`slim register`, DVC stage `register`, `slim promote`)."""

    model_name: str = Field("slim-encoder", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="registered model")
    primary_metric: str = Field(
        "linear.top1",
        pattern=r"^(linear|knn|semi1|semi10|finetune)\.(top1|top5|k\d+\.top1|k\d+\.top5)$",
        description="<protocol>.<metric> the challenger must beat the champion on",
    )
    margin: float = Field(0.0, ge=0.0, le=1.0, description="by at least this much (absolute; strictly better)")
    tolerance: float = Field(0.02, ge=0.0, le=1.0, description="largest drop of another protocol's top1")
    floor_anchors: list[Literal["random", "raw"]] = Field(
        ["random"],
        description="anchors (evaluate.dag.anchors, measured in the same DAG on the same split) the challenger "
        "must beat on primary_metric to become champion, the first one too; [] = no floor",
    )
    floor_margin: float = Field(
        0.0, ge=0.0, le=1.0, description="by at least this much over every floor anchor (absolute; strictly better)"
    )
    example_clips: int = Field(2, ge=2, le=64, description="real clips in the logged input example (>= 2)")
    throughput_batch: int = Field(16, ge=1, description="real clips per timed forward for clips/s")
    threads: int = Field(1, ge=0, description="torch threads while exporting and timing; 0 = one per core")

    @model_validator(mode="after")
    def _floor_is_measurable(self) -> RegistryParams:
        """The anchors are frozen-feature baselines (linear, knn): a floor on a fine-tuning metric would
        compare against numbers the DAG never measures."""
        if len(set(self.floor_anchors)) != len(self.floor_anchors):
            raise ValueError(f"registry.floor_anchors {self.floor_anchors}: an anchor is listed twice")
        protocol = self.primary_metric.split(".")[0]
        if self.floor_anchors and protocol not in ("linear", "knn"):
            raise ValueError(
                f"registry.floor_anchors {self.floor_anchors}: the anchors are evaluated only under the frozen "
                f"protocols (linear, knn), not {protocol!r} of primary_metric {self.primary_metric!r}; "
                "use a linear/knn primary_metric or set floor_anchors: []"
            )
        return self


class Params(_Strict):
    datasets: dict[str, DatasetParams]
    ingest: IngestParams = IngestParams()
    protocols: dict[str, str] = Field(description="protocol name -> dataset it splits")
    pretrain: PretrainParams | None = None
    evaluate: EvaluateParams | None = None
    registry: RegistryParams | None = None

    @model_validator(mode="after")
    def _protocols_match_datasets(self) -> Params:
        for name, dataset in self.protocols.items():
            protocol = get_protocol(name)
            if protocol.dataset != dataset:
                raise ValueError(f"protocol {name!r} splits dataset {protocol.dataset!r}, not {dataset!r}")
            if dataset not in self.datasets:
                raise ValueError(f"protocol {name!r} needs dataset {dataset!r}, which is not in `datasets`")
        return self

    @model_validator(mode="after")
    def _primary_metric_is_evaluated(self) -> Params:
        """The gate's primary metric must come from a protocol the DAG evaluates the SLiM encoder under."""
        if self.registry is None or self.evaluate is None:
            return self
        dag = self.evaluate.dag
        evaluated = (dag.frozen if "slim" in dag.methods else []) + (
            dag.finetuned if "slim" in dag.finetuned_methods else []
        )
        protocol = self.registry.primary_metric.split(".")[0]
        if protocol not in evaluated:
            raise ValueError(
                f"registry.primary_metric {self.registry.primary_metric!r}: evaluate.dag does not evaluate the "
                f"slim encoder under {protocol!r} (it does: {', '.join(evaluated) or 'nothing'})"
            )
        return self


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message says where."""


# Keys of the `pretrain` / `evaluate` sections that are the section's own; any other key there is a
# profile setting that overrides every profile (see `apply_section_overrides`).
_SECTION_KEYS = {"pretrain": {"profile", "profiles"}, "evaluate": {"profile", "profiles", "dag"}}


def _deep_merge(base: Any, update: Any) -> Any:
    """`update` over `base`, mappings merged key by key; a null in `update` leaves that key as it is
    (present with its value, or absent so that its default applies)."""
    if not isinstance(update, dict):
        return update
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in update.items():
        if value is not None:
            merged[key] = _deep_merge(merged.get(key), value)
    return merged


def apply_section_overrides(raw: dict) -> dict:
    """Profile settings written directly under `pretrain:` or `evaluate:` override them in every profile
    (nested mappings merge; null keeps the profile's value), so `dvc exp run -S pretrain.lr=1e-3` or
    `-S pretrain.slim.steps=200` changes the run whatever profile it uses. DVC's `-S` sets only keys
    that exist, hence the null placeholders in params.yaml; `-S +section.key=value` adds any other.
    Validation then checks the merged profiles."""
    raw = dict(raw)
    for section, own in _SECTION_KEYS.items():
        block = raw.get(section)
        if not isinstance(block, dict) or not isinstance(block.get("profiles"), dict):
            continue
        overrides = {k: v for k, v in block.items() if k not in own}
        if overrides:
            profiles = {name: _deep_merge(profile, overrides) for name, profile in block["profiles"].items()}
            raw[section] = {k: v for k, v in block.items() if k in own} | {"profiles": profiles}
    return raw


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path}: cannot read parameters: {exc}") from exc
    try:
        return Params.model_validate(apply_section_overrides(raw) if isinstance(raw, dict) else raw or {})
    except (ValidationError, ValueError) as exc:
        raise ParamsError(f"{path}: invalid parameters:\n{exc}") from exc


def load_profile(path: str | Path, section: Literal["pretrain", "evaluate"], name: str | None) -> tuple[str, Any]:
    """(name, settings) of profile `name` (default: the section's `profile`) in section `section`."""
    block = getattr(load_params(path), section)
    if block is None:
        raise ParamsError(f"{path}: no `{section}` section")
    name = name or block.profile
    if name not in block.profiles:
        known = ", ".join(block.profiles)
        raise ParamsError(f"{path}: unknown {section} profile {name!r}; known: {known}")
    return name, block.profiles[name]
