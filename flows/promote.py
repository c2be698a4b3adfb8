"""Flow `promote`: put a registered encoder version through the promotion gate (`slim promote`:
alias `champion` moves only if the candidate beats the anchors measured in its DAG run by
`registry.floor_margin`, and the champion if there is one; a first version below that floor leaves
no champion), or roll the champion back.

    python -m flows.promote                 # the `challenger`
    python -m flows.promote --version 3
    python -m flows.promote --rollback
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows import dag, report, stages
from flows.project import champion, model_name, project_root, short


@task(name="promotion-gate", task_run_name="gate {version}", cache_policy=NO_CACHE,
      retry_condition_fn=stages.transient_only, **stages.retry_options(stages.DEFAULT_RETRIES, 30))  # fmt: skip
def promote_task(
    root: Path, version: str = "challenger", force: bool = False, rollback: bool = False
) -> dict:
    """`slim promote --json` (serialised by the registry's promotion lock); returns its decision."""
    import shlex

    args = ["slim", "promote", "--json", "--version", version]
    if force:
        args.append("--force")
    if rollback:
        args = ["slim", "promote", "--json", "--rollback"]
    lines = dag.run_command(shlex.join(args), Path(root), what="slim promote", timeout_s=600)
    text = "\n".join(lines)
    decision = json.loads(text[text.index("{") : text.rindex("}") + 1])
    get_run_logger().info(
        "promotion: %s (v%s; champion now v%s)\n  %s",
        decision["decision"], decision["version"], decision["champion"], "\n  ".join(decision.get("reasons", [])),
    )  # fmt: skip
    return decision


@flow(name="promote", description="Promotion gate for a registered slim-encoder version (or a rollback).",
      validate_parameters=True)  # fmt: skip
def promote(
    version: Annotated[
        str, Field(pattern=r"^([0-9]+|[A-Za-z][\w-]*)$", description="Version number or alias")
    ] = "challenger",
    force: Annotated[
        bool, Field(description="Promote even if the gate refuses (recorded as forced)")
    ] = False,
    rollback: Annotated[
        bool, Field(description="Give champion back to the previous champion instead")
    ] = False,
    project_dir: Annotated[str | None, Field(description="Project folder (default: this checkout)")] = None,
) -> dict:
    root = project_root(project_dir)
    name = model_name(root)
    before = champion(name)
    decision = promote_task(root, version, force=force, rollback=rollback)
    after = champion(name)
    lines = [
        f"# promote {name}: {decision['decision']}",
        "",
        f"- candidate: v{decision['version']}",
        f"- champion before: {short(before)}; after: {short(after)}",
        *(["- **no champion**: no version has passed the gate (reasons below)"] if after is None else []),
        "",
        *(f"- {reason}" for reason in decision.get("reasons", [])),
    ]
    create_markdown_artifact("\n".join(lines), key="promotion", description=f"promotion of {name}")
    return decision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.promote", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version", default="challenger", help="version number or alias (default challenger)"
    )
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--rollback", action="store_true")
    args = parser.parse_args(argv)
    state = promote(version=args.version, force=args.force, rollback=args.rollback, return_state=True)
    return report.print_final_state(state)


if __name__ == "__main__":
    sys.exit(main())
