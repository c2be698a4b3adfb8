"""The deployments of this project, declared here; `python -m flows.deploy` creates the work pools
(type `process`) if missing and registers the deployments with the server at PREFECT_API_URL.

| deployment        | pool | schedule                        | what runs there                         |
|-------------------|------|---------------------------------|-----------------------------------------|
| retrain/weekly    | gpu  | cron `0 3 * * 0` + on demand    | the whole retrain flow (pretraining)    |
| evaluate/on-demand| cpu  | on demand                       | evaluations of a registered version     |
| promote/on-demand | cpu  | on demand                       | the promotion gate / rollback           |

Prefect places flow runs, not tasks, on pools: a retrain run runs all its tasks (pretraining and its
evaluation fan-out) on the `gpu` worker's machine, in the worker's project folder.

    python -m flows.deploy            # pools + deployments
    python -m flows.deploy --check    # also run `slim doctor` afterwards (exit 1 on problems)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from flows._env import ROOT

WEEKLY_CRON = "0 3 * * 0"  # Sundays 03:00
TIMEZONE = "UTC"

POOLS = {
    "gpu": "retrain: pretraining and its evaluations",
    "cpu": "evaluate and promote",
}


@dataclass(frozen=True)
class DeploymentSpec:
    flow: str  # flow name
    name: str  # deployment name
    entrypoint: str  # module path of the flow function
    pool: str
    cron: str | None = None
    description: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


DEPLOYMENTS = (
    DeploymentSpec("retrain", "weekly", "flows.retrain.retrain", "gpu", WEEKLY_CRON,
                   "Weekly retraining (skips when nothing changed); run on demand with `prefect deployment run retrain/weekly`."),
    DeploymentSpec("evaluate", "on-demand", "flows.evaluate.evaluate", "cpu", None,
                   "Evaluate a registered version (models:/slim-encoder/<v> or @alias) on chosen protocols."),
    DeploymentSpec("promote", "on-demand", "flows.promote.promote", "cpu", None,
                   "Promotion gate for a registered version, or a rollback."),
)  # fmt: skip


def ensure_pools(pools: dict[str, str] = POOLS) -> list[str]:
    """Create the missing work pools (type process); return the names created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    created = []
    with get_client(sync_client=True) as client:
        for name, description in pools.items():
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type="process",
                        description=description,
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                    )
                )
                created.append(name)
    return created


def deploy(project_dir: str | None = None) -> list[str]:
    """Register every deployment of DEPLOYMENTS (the code runs from the project folder: the worker
    changes into it and imports the flow by module path); return their ids."""
    from prefect import flow
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    root = str(project_dir or ROOT)
    ids = []
    for spec in DEPLOYMENTS:
        loaded = flow.from_source(source=root, entrypoint=spec.entrypoint)
        ids.append(
            str(
                loaded.deploy(
                    name=spec.name,
                    work_pool_name=spec.pool,
                    build=False,
                    push=False,
                    schedules=[CronSchedule(cron=spec.cron, timezone=TIMEZONE)] if spec.cron else [],
                    concurrency_limit=1,  # one run at a time per deployment: they share the DVC workspace
                    description=spec.description,
                    tags=["slim"],
                    job_variables={"working_dir": root},
                    entrypoint_type=EntrypointType.MODULE_PATH,
                    print_next_steps=False,
                    ignore_warnings=True,  # the "use .serve for local development" hint
                )
            )
        )
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="run the doctor afterwards; exit 1 on problems")
    args = parser.parse_args(argv)
    from flows.doctor import api_url, diagnose

    if not api_url():
        print(
            "error: PREFECT_API_URL is not set: deployments live on a server. Start one with\n"
            "  prefect server start --host 127.0.0.1 --port 4200\n"
            "and export PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 1
    created = ensure_pools()
    print(
        f"work pools: {', '.join(POOLS)}" + (f" (created {', '.join(created)})" if created else " (existed)")
    )
    deploy()
    for spec in DEPLOYMENTS:
        when = f"cron '{spec.cron}' ({TIMEZONE}) and on demand" if spec.cron else "on demand"
        print(f"deployment {spec.full_name}: pool {spec.pool}, {when}")
    report = diagnose()
    print(report.format())
    return 1 if args.check and report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
