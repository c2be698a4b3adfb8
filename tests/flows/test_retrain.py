"""The flows' logic under Prefect's test harness, on a copy of the session's built project (a subset
of the real NW-UCLA data, tiny profiles): after a change of evaluation params a run re-runs the
evaluations side by side, registers and crowns a champion; a second one skips; changes are
detected; a transient failure (DVC's repo lock held by another process) is retried; a killed
pretraining command resumes from its checkpoint; a registered version is evaluated."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
import zc.lockfile

from flows import dag, stages
from flows.evaluate import evaluate
from flows.retrain import detect_changes, retrain
from tests.project import copy_project, store_uri

pytestmark = [pytest.mark.usefixtures("harness"), pytest.mark.xdist_group("built_project")]


def _set_knn_ks(root: Path, ks: list[int]) -> str:
    """Change the tiny evaluation profile's kNN ks (out of date: every evaluation, not pretraining);
    return the previous params.yaml text."""
    original = (root / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["evaluate"]["profiles"]["tiny"]["knn_ks"] = ks
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return original


@pytest.fixture(scope="session")
def trained(harness, built_project, tmp_path_factory) -> dict:
    """A copy of the built project (DAG up to date by `dvc repro`, version 1 registered as challenger,
    no champion) with changed evaluation params, after a `retrain` run. Session-scoped, as its
    harness: pytest-xdist may interleave this module with others on one worker."""
    root = copy_project(built_project, tmp_path_factory.mktemp("flows") / "project")
    _set_knn_ks(root, [1, 3])
    with pytest.MonkeyPatch.context() as patch:
        _use_store(patch, root)
        state = retrain(project_dir=str(root), retry_delay_s=1.0, return_state=True)
    assert state.is_completed(), state.message
    return {"root": root, "result": state.result()}


def _use_store(patch: pytest.MonkeyPatch, root: Path) -> None:
    patch.setenv("MLFLOW_TRACKING_URI", store_uri(root))
    patch.delenv("SLIM_PARENT_RUN_ID", raising=False)
    patch.delenv("SLIM_TRACKING", raising=False)


@pytest.fixture(autouse=True)
def _project_store(request, monkeypatch) -> None:
    """Tests on the trained project track into (and read the registry of) its own MLflow store."""
    if "trained" in request.fixturenames:
        _use_store(monkeypatch, request.getfixturevalue("trained")["root"])


def _task_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))


def test_plan_is_derived_from_dvc():
    root = Path(__file__).resolve().parents[2]
    plan = dag.plan(dag.load_dag(root))
    methods = yaml.safe_load((root / "params.yaml").read_text())["evaluate"]["dag"]["methods"]
    assert [s.name for s in plan.pretrain] == [f"pretrain@{m}" for m in methods]
    groups = {s.group for s in plan.evaluations}
    assert {"features", "evaluate", "anchor"} <= groups
    assert not groups & {"ingest", "split", "pretrain", "register"}
    assert [g for g, _ in plan.groups("data")][:2] == ["ingest", "split"]
    by_name = {s.name: s for s in plan.evaluations}
    assert "features@slim" in by_name["evaluate@linear-slim"].upstream  # the fan-out waits for it
    assert by_name["evaluate@linear-slim"].cmd[0].startswith("slim evaluate")


def test_run_redoes_what_changed_registers_and_crowns(trained):
    from pipeline import registry

    root, result = trained["root"], trained["result"]
    assert result["status"] == "completed" and result["new_version"] == 2
    assert result["decision"]["decision"] == "first" and result["champion_after"]["version"] == 2
    assert dag.status(root) == {}  # everything committed: the next `dvc repro` is a no-op
    ran = {r.get("stage") for r in result["stages"] if r.get("ran") is True}
    assert {"features@slim", "evaluate@knn-slim", "anchor@knn-raw", "finetune@semi10-slim"} <= ran
    assert not ran & {"pretrain@slim", "pretrain@mae", "ingest@nw-ucla"}  # up to date: not redone
    knn = json.loads((root / "reports/knn/slim/metrics.json").read_text())
    assert set(knn["knn"]) == {"k1", "k3"}  # the evaluations ran with the new params
    assert registry.get_version("slim-encoder", "champion").version in ("2", 2)
    from prefect.artifacts import Artifact

    summary = Artifact.get("retrain-summary")
    assert "| knn |" in summary.data and "champion after: v2" in summary.data


def test_second_run_skips_when_nothing_changed(trained):
    state = retrain(project_dir=str(trained["root"]), return_state=True)
    assert state.is_completed() and state.name == "Skipped"
    assert "nothing changed since champion v2" in state.message


def test_changes_to_params_are_detected(trained):
    root = trained["root"]
    plan = dag.plan(dag.load_dag(root))
    original = _set_knn_ks(root, [1, 7])
    try:
        changes = detect_changes(root, plan, "slim-encoder")
        assert {"evaluate@knn-slim", "anchor@knn-raw"} <= set(changes.stages)
        assert "pretrain@slim" not in changes.stages
        assert any(m.startswith("slim.params_hash") for m in changes.mismatches)
    finally:
        (root / "params.yaml").write_text(original)
    assert not detect_changes(root, plan, "slim-encoder").anything


def test_transient_failure_is_retried_and_a_permanent_one_is_not(trained):
    """Another process holds DVC's repo lock: the task fails, is retried after the backoff, and
    passes once the lock is free. A stage that does not exist fails once, with DVC's message."""
    root = trained["root"]
    label = "split (lock held)"
    lock = zc.lockfile.LockFile(str(root / ".dvc" / "tmp" / "lock"))  # what a running `dvc` holds
    released = threading.Event()
    outcome: dict = {}

    def run() -> None:
        task = stages.repro.with_options(retries=3, retry_delay_seconds=[3, 3, 3], retry_jitter_factor=0)
        outcome["state"] = task(root, label, ["split@ucla-xview"], return_state=True)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while not any(
            r.state_name in ("AwaitingRetry", "Retrying") for r in _task_runs(f"dvc repro {label}")
        ):
            assert thread.is_alive() and time.monotonic() < deadline, "the task never failed on the lock"
            time.sleep(0.2)
    finally:
        lock.close()
        released.set()
        thread.join(timeout=180)
    assert outcome["state"].is_completed(), outcome["state"].message
    (run_,) = _task_runs(f"dvc repro {label}")
    assert run_.run_count >= 2

    bad = stages.repro.with_options(retries=2, retry_delay_seconds=[1, 1])(
        root, "nonexistent", ["no-such-stage"], return_state=True
    )
    assert bad.is_failed() and "not transient" in bad.message
    (run_,) = _task_runs("dvc repro nonexistent")
    assert run_.run_count == 1


def test_killed_pretraining_resumes_from_its_checkpoint(trained, tmp_path, monkeypatch):
    """SIGKILL the `slim pretrain` command after its first checkpoint: the task's retry continues from
    that checkpoint (`--resume`), and `dvc commit` leaves the stage up to date."""
    monkeypatch.setenv("SLIM_TRACKING", "off")
    root = tmp_path / "project"
    shutil.copytree(trained["root"], root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain"]["profiles"]["tiny"]["slim"]["steps"] = 40
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (stage,) = [s for s in dag.load_dag(root) if s.name == "pretrain@slim"]
    ckpts = root / "models" / "slim" / "checkpoints"
    outcome: dict = {}
    started = time.time()

    def run() -> None:
        task = stages.pretrain.with_options(retries=1, retry_delay_seconds=1)
        outcome["state"] = task(root, stage, return_state=True)

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 240
    while killed is None:
        assert thread.is_alive() and time.monotonic() < deadline, "no checkpoint to kill after"
        if any(p.stat().st_mtime > started for p in ckpts.glob("step-*.pt")):
            for proc in psutil.Process().children(recursive=True):
                cmdline = proc.cmdline()
                if "pretrain" in cmdline and "--method" in cmdline and str(root) in proc.cwd():
                    proc.send_signal(signal.SIGKILL)
                    killed = proc.pid
        time.sleep(0.05)
    thread.join(timeout=300)
    state = outcome["state"]
    assert state.is_completed(), state.message
    result = state.result()
    assert result["resumed_from"] is not None and 0 < result["resumed_from_step"] < 40
    metrics = json.loads((root / "models" / "slim" / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["resumed_from_step"] == result["resumed_from_step"]
    assert dag.changed(root, "pretrain@slim") == []


def test_evaluate_flow_scores_a_registered_version(trained):
    from pipeline import registry

    root = trained["root"]
    result = evaluate(model="models:/slim-encoder@champion", protocols=["knn"], project_dir=str(root))
    assert result["version"] == 2 and 0 <= result["metrics"]["knn"]["top1"] <= 1
    report = json.loads(
        (
            root / "reports" / "versions" / "slim-encoder-v2" / "ucla-xview" / "knn" / "metrics.json"
        ).read_text()
    )
    assert report["top1"] == result["metrics"]["knn"]["top1"]
    tags = registry.get_version("slim-encoder", 2).tags
    assert float(tags["eval.ucla-xview.knn.top1"]) == report["top1"]
