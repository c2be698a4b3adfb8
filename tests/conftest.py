"""Shared fixtures: paths to the bundled real data (read-only) and a few real clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SLIM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
UCLA_DIR = SHARED_DATA / "nw-ucla" / "all_sqe"
NTU_RAW_DIR = SHARED_DATA / "ntu" / "raw"


@pytest.fixture(scope="session")
def ucla_dir() -> Path:
    assert UCLA_DIR.is_dir(), f"real NW-UCLA data not found at {UCLA_DIR} (set SLIM_SHARED_DATA)"
    return UCLA_DIR


@pytest.fixture(scope="session")
def ntu_raw_dir() -> Path:
    assert NTU_RAW_DIR.is_dir(), f"real NTU raw data not found at {NTU_RAW_DIR} (set SLIM_SHARED_DATA)"
    return NTU_RAW_DIR


@pytest.fixture(scope="session")
def ucla_sequences(ucla_dir):
    """A dozen real NW-UCLA sequences, several actions and views (longest first)."""
    from slim.data.readers.ucla import read_ucla_file

    files = sorted(ucla_dir.glob("*.json"))[::120][:12]
    return sorted((read_ucla_file(f) for f in files), key=lambda s: -s.num_frames)


@pytest.fixture(scope="session")
def ucla_subset(ucla_dir, tmp_path_factory) -> dict[str, Path]:
    """Every 12th real NW-UCLA file (124 files, all views and actions) ingested to Parquet and split by
    ucla-xview, once per session. Tests read these files; they write their own beside them elsewhere."""
    from pipeline.ingest import run as ingest
    from pipeline.split import run as split

    root = tmp_path_factory.mktemp("ucla-subset")
    raw = root / "raw"
    raw.mkdir()
    for path in sorted(ucla_dir.glob("*.json"))[::12]:
        (raw / path.name).symlink_to(path)
    data = root / "parquet" / "sequences.parquet"
    ingest("nw-ucla", raw, data.parent, 0.0, 1, progress=False)
    split("ucla-xview", data, root / "split.json")
    return {"raw": raw, "data": data, "split": root / "split.json"}
