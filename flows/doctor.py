"""Why would a run sit in "Late"? Checks the Prefect server, the work pools, their workers, the
deployments and their late runs; `slim doctor` prints the report, the flows log it as a preflight
when a deployment runs them.

A deployment's run is picked up only by a worker polling its work pool: with no server reachable,
no pool, a paused pool or deployment, or no online worker, scheduled runs turn "Late" and stay so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flows.deploy import DEPLOYMENTS, POOLS


@dataclass
class Report:
    api_url: str | None = None
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"Prefect API: {self.api_url or 'none configured (ephemeral)'}"]
        lines += [f"  ok    {line}" for line in self.ok]
        lines += [f"  FAIL  {line}" for line in self.problems]
        lines.append("all good" if not self.problems else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"api_url": self.api_url, "ok": self.ok, "problems": self.problems}


def api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def diagnose(pools: dict[str, str] | None = None) -> Report:
    """Check the server, `pools` (name -> what runs there; default: the pools of flows/deploy.py),
    their workers, our deployments and their late runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound

    pools = POOLS if pools is None else pools
    report = Report(api_url=api_url())
    if not report.api_url:
        report.problems.append(
            "PREFECT_API_URL is not set: deployments need a server (flows run directly still work). Start one "
            "with `prefect server start --host 127.0.0.1 --port 4200` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
        return report
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
        if error is not None:
            report.problems.append(
                f"server {report.api_url} is unreachable ({type(error).__name__}: {error})"
            )
            return report
        report.ok.append(f"server {report.api_url} answers")
        for pool, purpose in pools.items():
            try:
                work_pool = client.read_work_pool(pool)
            except ObjectNotFound:
                report.problems.append(
                    f"work pool {pool!r} ({purpose}) does not exist: `prefect work-pool create {pool} --type process` "
                    "(or `python -m flows.deploy`)"
                )
                continue
            if work_pool.is_paused:
                report.problems.append(f"work pool {pool!r} is paused: `prefect work-pool resume {pool}`")
            workers = client.read_workers_for_work_pool(pool)
            online = [w.name for w in workers if w.status == WorkerStatus.ONLINE]
            if online:
                report.ok.append(f"work pool {pool!r} ({purpose}): {len(online)} worker(s) online")
            else:
                report.problems.append(
                    f"work pool {pool!r} ({purpose}) has no online worker: its runs sit in Late; start one with "
                    f"`prefect worker start --pool {pool}` (PREFECT_API_URL set, in the project folder)"
                )
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
        for spec in DEPLOYMENTS:
            found = deployments.get(spec.full_name)
            if found is None:
                report.problems.append(
                    f"deployment {spec.full_name} does not exist: `python -m flows.deploy`"
                )
                continue
            if found.paused:
                report.problems.append(
                    f"deployment {spec.full_name} is paused: `prefect deployment resume {spec.full_name}`"
                )
            else:
                report.ok.append(f"deployment {spec.full_name} on pool {found.work_pool_name!r}")
        late = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Late"]))
            ),
            deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[d.id for d in deployments.values()])
            )
            if deployments
            else None,
            limit=200,
        )
        by_id = {d.id: name for name, d in deployments.items()}
        counts: dict[str, int] = {}
        for run in late:
            name = by_id.get(run.deployment_id, "another deployment")
            counts[name] = counts.get(name, 0) + 1
        for name, count in sorted(counts.items()):
            pool = deployments[name].work_pool_name if name in deployments else "?"
            report.problems.append(
                f"{count} late run(s) of {name}: no worker picked them up from pool {pool!r}"
            )
    return report
