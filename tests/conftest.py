"""Shared fixtures: paths to the bundled real data (read-only), a few real clips, and MLflow stores
(a session SQLite file every test tracks into, and a real `mlflow server`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SLIM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
UCLA_DIR = SHARED_DATA / "nw-ucla" / "all_sqe"
NTU_RAW_DIR = SHARED_DATA / "ntu" / "raw"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Under `--dist loadgroup` (make test), pytest-xdist keeps an `xdist_group` on one worker by
    renaming its tests `<id>@<group>`. Fail at once if that renaming did not take (a pytest release
    that ignores it): the `built_project` tests would scatter and each worker rebuild the project."""
    if not getattr(config.option, "loadgroup", False):
        return
    scattered = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if scattered:
        raise pytest.UsageError(
            f"--dist loadgroup: pytest {pytest.__version__} ignored pytest-xdist's xdist_group renaming "
            f"(e.g. {scattered[0]}); install the pytest that pyproject.toml's dev extra pins"
        )


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> Iterator[str]:
    """Every test (and every process it starts) tracks into a session SQLite store, never the repo's
    mlflow.db; telemetry off, as the Makefile sets it."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.delenv("SLIM_PARENT_RUN_ID", raising=False)
        patch.delenv("SLIM_TRACKING", raising=False)
        yield f"sqlite:///{db}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 and a free port (its own SQLite store and artifact
    folder); yields its http URI, and stops it and its workers afterwards."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("w")
    # no job-execution processes (a runner and seven huey consumers, each importing mlflow: they
    # would double the start-up time on a small machine, and nothing here runs server-side jobs)
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not come up on {uri}:\n{(root / 'server.log').read_text()}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        processes = []
        with contextlib.suppress(psutil.Error):  # the server, and its uvicorn worker
            processes = [psutil.Process(server.pid)]
            processes += processes[0].children(recursive=True)
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=3)  # it ignores SIGTERM for long
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        server.wait()
        log.close()


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
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLIM_TRACKING", "off")  # a data fixture: tests of tracking run the stages themselves
        ingest("nw-ucla", raw, data.parent, 0.0, 1, progress=False)
        split("ucla-xview", data, root / "split.json")
    return {"raw": raw, "data": data, "split": root / "split.json"}


@pytest.fixture(scope="session")
def built_project(tmp_path_factory) -> Path:
    """A scratch project (tests/project.py: every 12th real NW-UCLA file, tiny profiles) after a real
    `dvc repro` of the whole DAG, once per session; tests copy it (`copy_project`), never change it.
    Mark its users `pytest.mark.xdist_group("built_project")` so `make test`'s workers build it once."""
    from tests.project import build_project

    return build_project(tmp_path_factory.mktemp("built") / "project")
