"""Where the project is, what its registered model is called, and who the champion is."""

from __future__ import annotations

import os
from pathlib import Path

from flows._env import ROOT


def project_root(project_dir: str | None = None) -> Path:
    """`project_dir`, else `$SLIM_PROJECT_DIR`, else this checkout; it must hold a dvc.yaml."""
    root = Path(project_dir or os.environ.get("SLIM_PROJECT_DIR") or ROOT).resolve()
    if not (root / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{root} has no dvc.yaml: not a slim-pipeline project")
    return root


def model_name(root: Path) -> str:
    """params.yaml `registry.model_name` (default slim-encoder)."""
    from pipeline.params import load_params

    params = load_params(root / "params.yaml")
    return params.registry.model_name if params.registry else "slim-encoder"


def champion(name: str) -> dict | None:
    """{version, run_id, tags} of the model's `champion`; None when there is none (or no such model,
    or tracking is off)."""
    from pipeline import registry, tracking

    if not tracking.enabled():
        return None
    try:
        version = registry.get_version(name, registry.CHAMPION)
    except registry.RegistryError:
        return None
    return {"version": int(version.version), "run_id": version.run_id, "tags": dict(version.tags)}


def short(version: dict | None) -> str:
    return f"v{version['version']}" if version else "none"
