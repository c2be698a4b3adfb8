"""Prefect tasks that run DVC stages (flows/dag.py): `dvc repro` for the sequential phases, a stage's
own command plus `dvc commit` for pretraining (resumable) and for the evaluations (run side by side).

Every task is idempotent: DVC says whether its stage is out of date and nothing runs if not, so a
re-run after a crash or a retry only redoes what is missing, and a pretraining run that was killed
continues from its newest checkpoint.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import dag
from flows.dag import Stage, StageFailed

RAN = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)  # in `dvc repro` output
RESUME_MARKER = "flow-run.json"  # in <out>/checkpoints/: the fingerprint of the run the checkpoints belong to
DEFAULT_RETRIES = 2


def transient_only(task, task_run, state) -> bool:
    """Prefect retry condition: retry transient failures (a killed process, a busy lock or server),
    fail at once on the others (a bad parameter, a bug, a timeout) with the command's own message."""
    try:
        state.result()
    except StageFailed as exc:
        return exc.transient
    except (ConnectionError, TimeoutError):
        return True
    except Exception as exc:  # noqa: BLE001  (e.g. MLflow's client giving up on a busy server)
        return bool(dag.TRANSIENT_PATTERNS.search(str(exc)))
    return False


def retry_options(retries: int, base_delay_s: float) -> dict:
    """Exponential backoff: base, 2 x base, 4 x base... (+-50% jitter)."""
    return {
        "retries": retries,
        "retry_delay_seconds": [base_delay_s * 2**i for i in range(max(retries, 1))],
        "retry_jitter_factor": 0.5,
    }


def _log_lines(prefix: str):
    logger = get_run_logger()

    def emit(line: str) -> None:
        if line.strip():
            logger.info("%s | %s", prefix, line)

    return emit


# Evaluation commands running at once. A task waiting for its upstream stages holds a thread of the
# task runner but no slot here, so the fan-out never idles a slot behind a waiting task.
_slots = threading.BoundedSemaphore(2)


def set_concurrency(n: int) -> None:
    global _slots
    _slots = threading.BoundedSemaphore(max(1, n))


@task(name="dvc-repro", task_run_name="dvc repro {label}", cache_policy=NO_CACHE, retry_condition_fn=transient_only,
      **retry_options(DEFAULT_RETRIES, 30))  # fmt: skip
def repro(
    root: Path, label: str, names: list[str], force: bool = False, timeout_s: float | None = None
) -> dict:
    """`dvc repro NAMES` (what changed in them and upstream); `force` reruns just these stages."""
    started = time.monotonic()
    lines = dag.repro(Path(root), names, force=force, on_line=_log_lines(label), timeout_s=timeout_s)
    ran = RAN.findall(lines)
    if not ran:
        get_run_logger().info("%s: up to date", label)
    return {"label": label, "ran": ran, "seconds": round(time.monotonic() - started, 1)}


def _run_stage_commands(root: Path, stage: Stage, cmds: list[str], timeout_s: float | None) -> None:
    dag.remove_cached_outs(root, stage)
    emit = _log_lines(stage.name)
    for cmd in cmds:
        emit(f"$ {cmd}")
        dag.run_command(cmd, root, what=stage.name, timeout_s=timeout_s, on_line=emit)


@task(name="pretrain", task_run_name="{stage.name}", cache_policy=NO_CACHE, retry_condition_fn=transient_only,
      **retry_options(DEFAULT_RETRIES, 30))  # fmt: skip
def pretrain(root: Path, stage: Stage, timeout_s: float | None = None) -> dict:
    """Run a pretraining stage's command, resuming from its newest checkpoint when an earlier attempt of
    the same run (same DVC fingerprint: command, dependency hashes, params) was interrupted; then
    `dvc commit` it. Pretraining picks CUDA when there is a GPU, else the CPU (slim.train)."""
    from slim.checkpoint import latest_checkpoint

    root = Path(root)
    logger = get_run_logger()
    pending = dag.changed(root, stage.name)
    if not pending:
        logger.info("%s: up to date", stage.name)
        return {"stage": stage.name, "ran": False}
    cmds = list(stage.cmd)
    resumed_from = None
    if stage.out_dir:
        ckpt_dir = root / stage.out_dir / "checkpoints"
        marker = ckpt_dir / RESUME_MARKER
        fingerprint = dag.fingerprint(root, stage.name)
        previous = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
        latest = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
        if previous == fingerprint and latest is not None:
            cmds[-1] += " --resume"
            resumed_from = latest.name
            logger.info(
                "%s: an interrupted run of the same inputs left %s: resuming from it", stage.name, latest.name
            )
        else:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"stage": stage.name, "fingerprint": fingerprint}) + "\n")
    started = time.monotonic()
    _run_stage_commands(root, stage, cmds, timeout_s)
    dag.commit(root, [stage.name])
    metrics = {}
    if stage.out_dir and (root / stage.out_dir / "metrics.json").is_file():
        metrics = json.loads((root / stage.out_dir / "metrics.json").read_text())
    return {
        "stage": stage.name,
        "ran": True,
        "resumed_from": resumed_from,
        "resumed_from_step": metrics.get("resumed_from_step"),
        "device": metrics.get("device"),
        "final_loss": metrics.get("final_loss"),
        "seconds": round(time.monotonic() - started, 1),
    }


@task(name="stage", task_run_name="{stage.name}", cache_policy=NO_CACHE, retry_condition_fn=transient_only,
      **retry_options(DEFAULT_RETRIES, 30))  # fmt: skip
def run_stage(
    root: Path, stage: Stage, stale: bool, upstream: list[dict], timeout_s: float | None = None
) -> dict:
    """Run one stage's own command, then `dvc commit` it (what `dvc repro STAGE` does, minus holding the
    repo-wide lock meanwhile, so that several run at once) if it was out of date when the fan-out
    started (`stale`) or a stage it reads from ran since (`upstream`: their results)."""
    root = Path(root)
    if not stale and not any(u.get("ran") for u in upstream):
        get_run_logger().info("%s: up to date", stage.name)
        return {"stage": stage.name, "ran": False}
    started = time.monotonic()
    with _slots:
        _run_stage_commands(root, stage, stage.cmd, timeout_s)
    dag.commit(root, [stage.name])
    return {"stage": stage.name, "ran": True, "seconds": round(time.monotonic() - started, 1)}


def fan_out(root: Path, stages: list[Stage], *, concurrency: int, timeout_s: float | None, retries: int,
            retry_delay_s: float) -> dict[str, dict]:  # fmt: skip
    """Submit every stage as a task (each waits for its upstream stages in `stages`), at most
    `concurrency` commands at once; wait for all. Returns {stage: result}; raises with the list of the
    stages that failed (or never ran because an upstream stage failed) after all others finished."""
    if not stages:
        return {}
    set_concurrency(concurrency)
    stale = dag.status(Path(root), [s.name for s in stages])
    runner = run_stage.with_options(
        **retry_options(retries, retry_delay_s),
        timeout_seconds=(timeout_s + 60) if timeout_s else None,  # a backstop: run_command kills at timeout_s
    )
    futures = {}
    for stage in stages:  # DAG order: upstream futures exist before their dependants are submitted
        upstream = [futures[name] for name in stage.upstream if name in futures]
        futures[stage.name] = runner.submit(root, stage, stage.name in stale, upstream, timeout_s)
    results, failed = {}, []
    for name, future in futures.items():
        future.wait()
        state = future.state
        if state.is_completed():
            results[name] = future.result()
        else:
            failed.append(f"{name} ({state.name}: {state.message or ''})")
    if failed:
        raise RuntimeError("evaluation stages failed or did not run:\n  " + "\n  ".join(failed))
    return results


@task(name="command", task_run_name="{label}", cache_policy=NO_CACHE, retry_condition_fn=transient_only,
      **retry_options(DEFAULT_RETRIES, 30))  # fmt: skip
def command(root: Path, label: str, cmds: list[str], timeout_s: float | None = None) -> dict:
    """Run commands that are not a DVC stage (e.g. evaluating a registered version), holding one of the
    `set_concurrency` slots."""
    started = time.monotonic()
    emit = _log_lines(label)
    with _slots:
        for cmd in cmds:
            emit(f"$ {cmd}")
            dag.run_command(cmd, Path(root), what=label, timeout_s=timeout_s, on_line=emit)
    return {"label": label, "ran": True, "seconds": round(time.monotonic() - started, 1)}
