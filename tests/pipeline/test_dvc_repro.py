"""The data half of the real DAG (ingest -> split), run by real DVC on the real bundled data, in a
scratch copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import NTU_RAW_DIR, REPO_ROOT, UCLA_DIR

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dvc_repro")]  # one worker builds `project`


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in ("slim", "pipeline", "dvc.yaml"):
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["datasets"]["nw-ucla"]["raw"] = str(UCLA_DIR)
    params["datasets"]["ntu"]["raw"] = str(NTU_RAW_DIR)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], root)
    _run([sys.executable, "-m", "dvc", "repro", "ingest", "split"], root)  # NTU is ingested, not split
    return root


def test_repro_ingests_every_bundled_file(project):
    ucla = pq.read_table(project / "data/parquet/nw-ucla/sequences.parquet", columns=["sample_id", "label"])
    assert ucla.num_rows == len(list(UCLA_DIR.glob("*.json"))) == 1484
    assert sorted(set(ucla.column("label").to_pylist())) == list(range(10))
    ntu = pq.read_table(project / "data/parquet/ntu/sequences.parquet", columns=["sample_id"])
    assert ntu.num_rows == len(list(NTU_RAW_DIR.glob("*.skeleton")))
    assert (project / "data/parquet/nw-ucla/quarantine.jsonl").read_text() == ""


def test_repro_writes_protocol_splits(project):
    split = json.loads((project / "data/splits/ucla-xview.json").read_text())
    assert (len(split["train"]), len(split["test"])) == (1020, 464)
    assert all(sid.endswith("_v03") for sid in split["test"])
    assert not set(split["train"]) & set(split["test"])


def test_second_repro_is_a_no_op_and_status_is_clean(project):
    out = _run([sys.executable, "-m", "dvc", "repro", "ingest", "split"], project)
    assert "didn't change, skipping" in out or "up to date" in out
    assert "Running stage" not in out
    assert "up to date" in _run([sys.executable, "-m", "dvc", "status", "ingest", "split"], project)


def test_metrics_show_lists_ingestion_counts(project):
    out = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], project)
    assert "data/parquet/nw-ucla/summary.json" in out
