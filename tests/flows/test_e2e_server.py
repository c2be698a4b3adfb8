"""End to end through a real Prefect server: a copy of the session's built project (real NW-UCLA
subset, tiny profiles, DAG built by `dvc repro`, version 1 registered as challenger, no champion),
`prefect server start` on 127.0.0.1 and a free port, the pools and deployments of flows/deploy.py,
`slim doctor` naming the pool without a worker, a process worker on `gpu`, `retrain/weekly` triggered
with `prefect deployment run`, and the project's MLflow registry gaining a version that becomes
champion. The flow's own running of the stages is tested in test_retrain.py; here the DAG is up to
date, so the run is preflight, change detection, register and the gate. Every process started here
is stopped afterwards (by process group)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.project import copy_project, store_uri

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("built_project")]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if it has not gone after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def stack(built_project, tmp_path_factory) -> Iterator[dict]:
    """The project, its environment (own PREFECT_HOME, API URL, MLflow store) and a running server."""
    base = tmp_path_factory.mktemp("e2e")
    root = copy_project(built_project, base / "project")
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root),  # the project's own copy of the code (flows, pipeline, slim)
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # the worker polls for scheduled runs every 2 s, not 10
        "MLFLOW_TRACKING_URI": store_uri(root),
    }
    env.pop("SLIM_PARENT_RUN_ID", None)
    env.pop("SLIM_TRACKING", None)
    logs = base / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(list(args), cwd=root, env=env, stdout=(logs / f"{name}.log").open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        procs.append(proc)
        return proc

    server = start(
        "server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            assert server.poll() is None and time.monotonic() < deadline, (logs / "server.log").read_text()
            time.sleep(1)
        yield {"root": root, "env": env, "start": start, "logs": logs}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def run(stack: dict, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(args), cwd=stack["root"], env=stack["env"], capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_deployed_retrain_runs_on_a_worker_and_registers_a_version(stack):
    py = sys.executable
    run(stack, py, "-m", "flows.deploy")
    listed = run(stack, str(BIN / "prefect"), "deployment", "ls").stdout
    assert "retrain/weekly" in listed and "evaluate/on-demand" in listed
    schedules = run(stack, str(BIN / "prefect"), "deployment", "schedule", "ls", "retrain/weekly").stdout
    assert "0 3 * * 0" in schedules

    # No worker yet: the doctor says which pool lacks one (a run would sit in Late).
    doctor = run(stack, str(BIN / "slim"), "doctor", "--json", check=False)
    assert doctor.returncode == 1
    problems = json.loads(doctor.stdout)["problems"]
    assert any("'gpu'" in p and "no online worker" in p for p in problems), problems

    stack["start"]("worker", str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--name", "e2e-gpu")
    triggered = run(
        stack, str(BIN / "prefect"), "deployment", "run", "retrain/weekly", "-p", "retry_delay_s=2",
        "--watch", "--watch-interval", "2", "--watch-timeout", "900", timeout=960, check=False,
    )  # fmt: skip
    worker_log = (stack["logs"] / "worker.log").read_text()
    assert "Completed" in triggered.stdout, (
        f"{triggered.stdout}\n{triggered.stderr}\n--- worker:\n{worker_log[-6000:]}"
    )

    # The project's registry gained version 2 (`dvc repro` registered 1), and it is the first champion.
    check = (
        "from pipeline import registry; v = registry.get_version('slim-encoder', 'champion'); "
        "print(v.version, sorted(registry.aliases('slim-encoder')))"
    )
    out = run(stack, py, "-c", check).stdout.split()
    assert out[0] == "2" and "champion" in " ".join(out[1:]) and "challenger" in " ".join(out[1:])
    registered = json.loads((stack["root"] / "registry" / "slim-encoder.json").read_text())
    assert registered["version"] == 2
    assert run(stack, py, "-m", "dvc", "status").stdout.strip() in ("", "Data and pipelines are up to date.")
