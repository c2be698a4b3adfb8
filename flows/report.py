"""Markdown summaries of flow runs (Prefect artifacts): metrics table, champion before/after, MLflow links."""

from __future__ import annotations

import json
from pathlib import Path

ENCODER_ORDER = ("slim", "mae", "raw", "random", "supervised")
PROTOCOL_ORDER = ("linear", "knn", "semi1", "semi10", "finetune")


def print_final_state(state) -> int:
    """Print a finished flow run's result as JSON (or its failure message); the exit status for `main`."""
    if state.is_completed():
        print(json.dumps(state.result(raise_on_failure=False), indent=2, default=str))
        return 0
    print(state.message)
    return 1


def _rank(value: str, order: tuple[str, ...]) -> tuple:
    return (order.index(value) if value in order else len(order), value)


def collect_metrics(reports: Path) -> dict[str, dict[str, dict]]:
    """{protocol: {encoder: metrics.json}} from `reports/<protocol>/<encoder>/metrics.json`."""
    table: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(reports).glob("*/*/metrics.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        table.setdefault(path.parent.parent.name, {})[path.parent.name] = doc
    return table


def pct(value) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def metrics_table(table: dict[str, dict[str, dict]]) -> str:
    """Top-1 (%) by protocol (rows) and encoder (columns)."""
    if not table:
        return "_no evaluation reports_"
    encoders = sorted({e for row in table.values() for e in row}, key=lambda e: _rank(e, ENCODER_ORDER))
    lines = ["| protocol | " + " | ".join(encoders) + " |", "|---" * (len(encoders) + 1) + "|"]
    for protocol in sorted(table, key=lambda p: _rank(p, PROTOCOL_ORDER)):
        cells = [pct(table[protocol].get(e, {}).get("top1")) for e in encoders]
        lines.append(f"| {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n_top-1 accuracy (%) on the test split_"


def run_link(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str:
    """A link to the MLflow UI for a server URI; the run id (and the `mlflow ui` hint) otherwise."""
    if not run_id:
        return "-"
    if tracking_uri.startswith(("http://", "https://")) and experiment_id:
        return f"[{run_id[:8]}]({tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"`{run_id}`"


def version_line(version: dict | None) -> str:
    if not version:
        return "none"
    return f"v{version['version']} (run `{version.get('run_id') or '-'}`)"


def stages_table(results: list[dict]) -> str:
    if not results:
        return "_nothing ran_"
    lines = ["| stage | ran | seconds | note |", "|---|---|---|---|"]
    for r in results:
        name = r.get("stage") or r.get("label")
        ran = r.get("ran")
        ran = ("yes" if ran else "up to date") if isinstance(ran, bool) else (", ".join(ran) or "up to date")
        note = []
        if r.get("resumed_from"):
            note.append(f"resumed from {r['resumed_from']}")
        if r.get("device"):
            note.append(f"device {r['device']}")
        lines.append(f"| {name} | {ran} | {r.get('seconds', '-')} | {'; '.join(note)} |")
    return "\n".join(lines)
