"""`slim pretrain` killed with SIGKILL mid-run, then resumed, ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from slim.checkpoint import checkpoint_name, latest_checkpoint, load_checkpoint
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

STEPS = 24
TINY_PROFILE = {
    "batch_size": 8,
    "lr": 3e-2,
    "threads": 1,
    "checkpoint_every": 4,
    "keep_checkpoints": 2,
    "num_workers": 1,
    "slim": {
        "steps": STEPS,
        "model": {"encoder": {"dim": 32, "depth": 1, "heads": 2}, "num_prototypes": 64,
                  "head_hidden_dim": 64, "head_bottleneck_dim": 32},
        "views": {"local_frames": [32, 16, 8]},
    },
    "mae": {
        "steps": STEPS,
        "model": {"dim": 32, "depth": 1, "heads": 2, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def inputs(ucla_subset, tmp_path_factory) -> dict[str, Path]:
    """The real NW-UCLA subset as Parquet, its ucla-xview split, and params.yaml with a `tiny` profile."""
    root = tmp_path_factory.mktemp("resume")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["pretrain"]["profiles"]["tiny"] = TINY_PROFILE
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return {"data": ucla_subset["data"], "split": ucla_subset["split"], "params": root / "params.yaml"}


def command(method: str, inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.cli", "pretrain", "--method", method, "--split", str(inputs["split"]),
        "--data", str(inputs["data"]), "--out", str(out), "--profile", "tiny", "--params", str(inputs["params"]),
        "--no-progress", *extra,
    ]  # fmt: skip


# Tracking is tested elsewhere (tests/flows: a killed, resumed pretraining under a tracked flow); off,
# each of the six processes here skips MLflow's ~6 s start-up.
UNTRACKED = {**os.environ, "SLIM_TRACKING": "off"}


def run_to_end(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=UNTRACKED, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def final_state(out: Path) -> dict:
    return load_checkpoint(out / "checkpoints" / checkpoint_name(STEPS))["model"]


@pytest.mark.parametrize("method", ["slim", "mae"])
def test_kill_9_then_resume_is_bit_identical(inputs, tmp_path, method):
    whole = run_to_end(command(method, inputs, tmp_path / "whole"))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(method, inputs, killed), cwd=REPO_ROOT, env=UNTRACKED,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while latest_checkpoint(killed / "checkpoints") is None:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside the steps after the checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    cut = latest_checkpoint(killed / "checkpoints")
    assert cut.name != checkpoint_name(STEPS) and not (killed / "encoder.pt").exists(), "killed too late"

    resumed = run_to_end(command(method, inputs, killed, "--resume"))
    assert 0 < resumed["resumed_from_step"] < STEPS

    a, b = final_state(tmp_path / "whole"), final_state(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    assert resumed["final_loss"] == whole["final_loss"]
    with (killed / "plots.csv").open() as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == list(range(STEPS))
