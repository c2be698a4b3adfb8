"""A scratch copy of the project on a subset of the real NW-UCLA data with tiny profiles, as its own
git + DVC repository; and one such project built once per session by a real `dvc repro` of the
whole DAG, which the DAG, flow and end-to-end tests copy instead of each building their own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT, UCLA_DIR

TINY_PRETRAIN = {
    "seed": 0, "batch_size": 8, "precision": "fp32", "threads": 1, "num_workers": 0,
    "checkpoint_every": 2, "keep_checkpoints": 2, "lr": 3e-2, "final_lr": 1e-6,
    "weight_decay": [0.04, 0.2], "clip_grad": 3.0,
    "slim": {"steps": 4, "model": {"encoder": {"dim": 32, "depth": 1, "heads": 2}, "num_prototypes": 64,
                                    "head_hidden_dim": 64, "head_bottleneck_dim": 32},
             "views": {"local_frames": [32, 16, 8]}},
    "mae": {"steps": 4, "model": {"dim": 32, "depth": 1, "heads": 2, "decoder_dim": 32, "decoder_depth": 1,
                                  "decoder_heads": 2}},
}  # fmt: skip
TINY_EVALUATE = {
    "seed": 0, "threads": 1, "batch_size": 64, "knn_ks": [1, 5], "knn_temperature": 0.07,
    "linear": {"epochs": 5, "batch_size": 64}, "finetune": {"epochs": 1, "batch_size": 16},
    "semi1": {"fraction": 0.01, "epochs": 1}, "semi10": {"fraction": 0.1, "epochs": 1},
}  # fmt: skip
COPIED = ("slim", "pipeline", "flows", "dvc.yaml")


def make_project(root: Path, *, every: int = 12, pretrain: dict | None = None) -> Path:
    """A scratch copy of the project (code, dvc.yaml, a tiny params.yaml) on every `every`-th real
    NW-UCLA file (symlinked; the shared data stays read-only), as its own git + DVC repository."""
    root.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    raw = root / "raw" / "nw-ucla"
    raw.mkdir(parents=True)
    for path in sorted(UCLA_DIR.glob("*.json"))[::every]:
        (raw / path.name).symlink_to(path)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["datasets"] = {"nw-ucla": {"format": "nw-ucla", "raw": "raw/nw-ucla"}}
    params["protocols"] = {"ucla-xview": "nw-ucla"}
    params["ingest"]["workers"] = 1
    params["pretrain"]["profile"] = "tiny"
    params["pretrain"]["profiles"]["tiny"] = pretrain or TINY_PRETRAIN
    params["evaluate"]["profile"] = "tiny"
    params["evaluate"]["profiles"]["tiny"] = TINY_EVALUATE
    # Everything the `register` stage reads (dvc.yaml): both anchors; no MAE keeps the DAG small.
    params["evaluate"]["dag"] = {"methods": ["slim"], "frozen": ["linear", "knn"], "anchors": ["raw", "random"],
                                 "finetuned": ["semi10"], "finetuned_methods": ["slim"]}  # fmt: skip
    # A 4-step encoder is not expected to beat random init: the flows' tests exercise the registry
    # plumbing, the floor has its own tests (tests/pipeline/test_promote.py).
    params["registry"]["floor_anchors"] = []
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text(
        "/data/\n/models/\n/reports/\n/features/\n/registry/\n/mlflow.db\n/mlartifacts/\n/.prefect/\n"
    )
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "config", "core.analytics", "false"]):  # fmt: skip
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def project_env(root: Path) -> dict[str, str]:
    """The environment to run the project's commands in: its venv first on PATH, its own MLflow store."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=store_uri(root))
    env.pop("SLIM_PARENT_RUN_ID", None)
    env.pop("SLIM_TRACKING", None)
    return env


def store_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def build_project(root: Path) -> Path:
    """make_project, then `dvc repro` of the whole DAG (tracked into the project's own mlflow.db)."""
    make_project(root)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=root, env=project_env(root), capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, f"dvc repro failed:\n{proc.stdout}\n{proc.stderr}"
    return root


def copy_project(src: Path, dst: Path) -> Path:
    """A copy with its outputs, DVC cache, git history and MLflow store (raw data stays symlinked)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst
