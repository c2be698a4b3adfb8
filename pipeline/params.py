"""`params.yaml` -> validated, typed configuration (unknown keys and bad values are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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


class Params(_Strict):
    datasets: dict[str, DatasetParams]
    ingest: IngestParams = IngestParams()
    protocols: dict[str, str] = Field(description="protocol name -> dataset it splits")

    @model_validator(mode="after")
    def _protocols_match_datasets(self) -> Params:
        for name, dataset in self.protocols.items():
            protocol = get_protocol(name)
            if protocol.dataset != dataset:
                raise ValueError(f"protocol {name!r} splits dataset {protocol.dataset!r}, not {dataset!r}")
            if dataset not in self.datasets:
                raise ValueError(f"protocol {name!r} needs dataset {dataset!r}, which is not in `datasets`")
        return self


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message says where."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path}: cannot read parameters: {exc}") from exc
    try:
        return Params.model_validate(raw or {})
    except (ValidationError, ValueError) as exc:
        raise ParamsError(f"{path}: invalid parameters:\n{exc}") from exc
