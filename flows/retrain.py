"""Flow `retrain`: when raw data or params changed since the champion, bring the DVC DAG up to date
(ingest -> split -> pretrain -> evaluations side by side -> register) and run the promotion gate.

Run it directly (Prefect's ephemeral API, state in ./.prefect, no server):

    python -m flows.retrain             # or: python -m flows.retrain --force

or through the deployment `retrain/weekly` on the `gpu` work pool (flows/deploy.py, docs/flows.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows import dag, report, stages
from flows.project import champion, model_name, project_root
from flows.promote import promote_task


class Changes(BaseModel):
    """What changed since the champion was built."""

    stages: dict[str, list]  # dvc status: stage -> what changed
    champion: dict | None  # version, run_id, tags
    mismatches: list[str]  # champion's lineage tags that differ from now
    dataset: str
    data_path: str | None

    @property
    def anything(self) -> bool:
        return bool(self.stages or self.mismatches or self.champion is None)

    def reasons(self) -> list[str]:
        out = []
        if self.stages:
            names = sorted(self.stages)
            out.append(
                f"DVC: {len(names)} stage(s) out of date: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
            )
        out.extend(self.mismatches)
        if self.champion is None:
            out.append("no champion registered yet")
        return out


def _data_path(plan: dag.Plan) -> str | None:
    """The Parquet the pretraining reads (the `--data` of the first pretraining stage)."""
    return next((dag.option(s.cmd, "--data") for s in plan.pretrain if dag.option(s.cmd, "--data")), None)


@task(
    name="preflight",
    cache_policy=NO_CACHE,
    retry_condition_fn=stages.transient_only,
    **stages.retry_options(2, 10),
)
def preflight(root: Path) -> dict:
    """Fail early with a clear message: params valid, raw data present, DVC repo, MLflow reachable;
    when run by a deployment, also say which work pools have no worker (their runs would sit in Late)."""
    import torch

    from pipeline import tracking
    from pipeline.params import load_params

    logger = get_run_logger()
    params = load_params(root / "params.yaml")
    for name, dataset in params.datasets.items():
        raw = (root / dataset.raw).resolve()
        if not raw.is_dir():
            raise FileNotFoundError(
                f"raw data of dataset {name!r} not found: {raw} (params.yaml datasets.{name}.raw)"
            )
    if not (root / ".dvc").is_dir():
        raise FileNotFoundError(f"{root} is not a DVC repository (no .dvc/): run `dvc init` there")
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        logger.info("no GPU here: pretraining falls back to the CPU")
    uri = tracking.tracking_uri()
    if tracking.enabled() and uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as answer:
                answer.read()
        except OSError as exc:
            raise ConnectionError(
                f"MLflow server {uri} is unreachable ({exc}); start it or fix MLFLOW_TRACKING_URI"
            ) from exc
    problems = []
    if deployment.get_id():
        from flows import doctor

        problems = doctor.diagnose().problems
        for problem in problems:
            logger.warning("doctor: %s", problem)
    return {"device": device, "tracking_uri": uri, "tracking": tracking.enabled(), "doctor": problems}


@task(
    name="detect-changes",
    cache_policy=NO_CACHE,
    retry_condition_fn=stages.transient_only,
    **stages.retry_options(2, 10),
)
def detect_changes(root: Path, plan: dag.Plan, name: str) -> Changes:
    """DVC status of the whole DAG, and the champion's lineage tags (data hash of the pretraining
    Parquet, params hash) against the workspace now."""
    from pipeline import tracking

    data_path = _data_path(plan)
    dataset = Path(data_path).parent.name if data_path else "nw-ucla"
    pending = dag.status(root)
    current = champion(name)
    mismatches = []
    if current is not None:
        tags = current["tags"]
        now = {"slim.params_hash": tracking.params_hash(root / "params.yaml")}
        if data_path and (root / data_path).is_file():
            now["dvc.data_hash"] = tracking.data_hash(root / data_path)
        for key, value in now.items():
            if key in tags and tags[key] != value:
                mismatches.append(
                    f"{key}: champion v{current['version']} has {tags[key]}, the workspace {value}"
                )
    return Changes(
        stages=pending, champion=current, mismatches=mismatches, dataset=dataset, data_path=data_path
    )


def _registered(root: Path, name: str) -> dict | None:
    path = root / "registry" / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_name() -> str:
    return f"retrain {datetime.now():%Y-%m-%d %H:%M}"


@flow(
    name="retrain",
    flow_run_name=_run_name,
    # Threads mostly wait (for a command or an upstream stage); `eval_concurrency` bounds the work.
    task_runner=ThreadPoolTaskRunner(max_workers=32),
    description="Retrain when raw data or params changed: DVC stages ingest -> split -> pretrain -> "
    "evaluations in parallel -> register, then the promotion gate.",
    validate_parameters=True,
)
def retrain(
    force: Annotated[
        bool, Field(description="Run even if nothing changed (re-registers the current encoder)")
    ] = False,
    promote: Annotated[bool, Field(description="Run the promotion gate on the new version")] = True,
    eval_concurrency: Annotated[int, Field(ge=1, le=64, description="Evaluation commands at once")] = 2,
    pretrain_timeout_h: Annotated[
        float, Field(gt=0, description="Kill a pretraining stage after this many hours")
    ] = 48.0,
    stage_timeout_h: Annotated[
        float, Field(gt=0, description="Kill any other stage after this many hours")
    ] = 6.0,
    retries: Annotated[int, Field(ge=0, le=10, description="Retries of a transient failure")] = 2,
    retry_delay_s: Annotated[float, Field(ge=0, description="First retry delay; doubles each retry")] = 30.0,
    project_dir: Annotated[str | None, Field(description="Project folder (default: this checkout)")] = None,
) -> dict:
    from pipeline import tracking

    logger = get_run_logger()
    started = time.monotonic()
    root = project_root(project_dir)
    name = model_name(root)
    retry = stages.retry_options(retries, retry_delay_s)
    info = preflight(root)
    plan = dag.plan(dag.load_dag(root))
    changes = detect_changes(root, plan, name)
    result = {
        "status": "skipped",
        "reasons": changes.reasons(),
        "champion_before": changes.champion and {k: changes.champion[k] for k in ("version", "run_id")},
        "device": info["device"],
    }
    if not changes.anything and not force:
        message = f"nothing changed since champion v{changes.champion['version']}: skipped"
        logger.info(message)
        _artifact(root, result | {"status": message}, [], None)
        return Completed(name="Skipped", message=message, data=result)
    logger.info("retraining: %s", "; ".join(changes.reasons()) or "forced")

    results: list[dict] = []
    with tracking.pipeline_run(changes.dataset, name=flow_run.get_name() or _run_name()) as parent_id:
        for group, names in plan.groups("data"):
            results.append(
                stages.repro.with_options(**retry)(root, group, names, timeout_s=stage_timeout_h * 3600)
            )
        for stage in plan.pretrain:
            results.append(
                stages.pretrain.with_options(**retry)(root, stage, timeout_s=pretrain_timeout_h * 3600)
            )
        evaluated = stages.fan_out(
            root, plan.evaluations, concurrency=eval_concurrency, timeout_s=stage_timeout_h * 3600,
            retries=retries, retry_delay_s=retry_delay_s,
        )  # fmt: skip
        results.extend(evaluated.values())
        # Re-register when DVC has nothing to do but the registry lacks this encoder (no champion, or
        # the champion was built from other data/params) or when forced.
        reregister = force or changes.champion is None or bool(changes.mismatches)
        for group, names in plan.groups("publish"):
            force_it = reregister and group == dag.REGISTER_GROUP
            results.append(
                stages.repro.with_options(**retry)(
                    root, group, names, force=force_it, timeout_s=stage_timeout_h * 3600
                )
            )
        registered = any(
            plan.register and plan.register.name in r.get("ran", []) for r in results if "label" in r
        )
        new_version = _registered(root, name) if registered else None
        decision = None
        if plan.register is None:
            logger.warning("dvc.yaml has no `register` stage: nothing registered, no promotion")
        elif new_version is None:
            logger.info("no new version registered: promotion skipped")
        elif promote:
            decision = promote_task.with_options(**retry)(root, str(new_version["version"]))
    leftover = dag.status(root)
    if leftover:
        logger.warning(
            "still out of date after the run (not part of any phase?): %s", ", ".join(sorted(leftover))
        )
    result |= {
        "status": "completed",
        "new_version": new_version and new_version.get("version"),
        "decision": decision,
        "champion_after": (c := champion(name)) and {k: c[k] for k in ("version", "run_id")},
        "parent_run_id": parent_id,
        "stages": results,
        "seconds": round(time.monotonic() - started, 1),
    }
    _artifact(root, result, results, parent_id)
    return result


def _artifact(root: Path, result: dict, results: list[dict], parent_id: str | None) -> None:
    from pipeline import tracking

    uri = tracking.tracking_uri()
    experiment_id = None
    if parent_id and tracking.enabled():
        try:
            experiment_id = tracking.client().get_run(parent_id).info.experiment_id
        except Exception:  # noqa: BLE001  (a summary must not fail the run)
            experiment_id = None
    decision = result.get("decision") or {}
    lines = [
        f"# retrain: {result['status']}",
        "",
        "**Why:** " + ("; ".join(result.get("reasons") or []) or "forced"),
        "",
        f"- champion before: {report.version_line(result.get('champion_before'))}",
        f"- new version: {('v' + str(result['new_version'])) if result.get('new_version') else 'none'}",
        f"- promotion: {decision.get('decision', '-')}"
        + (f" ({'; '.join(decision.get('reasons', []))})" if decision else ""),
        f"- champion after: {report.version_line(result.get('champion_after', result.get('champion_before')))}",
        f"- MLflow: store `{uri}`, pipeline run {report.run_link(uri, experiment_id, parent_id)}",
        f"- device: {result.get('device')}; wall time {result.get('seconds', '-')} s",
        "",
        "## Metrics",
        "",
        report.metrics_table(report.collect_metrics(root / "reports")),
        "",
        "## Stages",
        "",
        report.stages_table(results),
    ]
    create_markdown_artifact(
        "\n".join(lines), key="retrain-summary", description="retrain: metrics, champion, MLflow runs"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="run even if nothing changed")
    parser.add_argument("--no-promote", dest="promote", action="store_false", help="skip the promotion gate")
    parser.add_argument(
        "--eval-concurrency", type=int, default=2, help="evaluation commands at once (default 2)"
    )
    args = parser.parse_args(argv)
    state = retrain(
        force=args.force, promote=args.promote, eval_concurrency=args.eval_concurrency, return_state=True
    )
    print(f"retrain: {state.name}: {state.message or ''}".rstrip(": "))
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
