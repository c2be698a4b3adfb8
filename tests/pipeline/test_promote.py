"""The promotion gate on a real SQLite MLflow store: first champion, refusals and their reasons,
promotion, rollback, the CLI's exit codes, and two concurrent promotions.

One tiny real encoder is logged once (input example: real clips); each test registers it under its
own model name with metric tags from hand-written metrics.json files: the gate compares numbers.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from pipeline import registry
from pipeline.cli import app
from pipeline.paths import REPO_ROOT
from tests.pipeline.test_registry import one_torch_thread, register_with, shared_store, write_params  # noqa: F401

RULES = registry.GateRules(primary_metric="linear.top1", margin=0.01, tolerance=0.02)
runner = CliRunner()


@pytest.fixture
def model(mlflow_store, ucla_subset, tmp_path_factory, request, tmp_path, monkeypatch):
    """(name, add(linear=..., knn=...) -> version): this test's own registered model in the shared
    store, every version the same logged tiny encoder with the given metrics."""
    shared = shared_store(mlflow_store, tmp_path_factory, ucla_subset["data"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared["store"])
    name = f"promote-{request.node.name.replace('_', '-')}"[:60]
    counter = iter(range(1000))

    def add(**top1: float) -> int:
        return register_with(shared["uri"], name, tmp_path / f"reports{next(counter)}", top1)

    return name, add


def test_decide_rules():
    champion = {"linear.top1": 0.50, "knn.top1": 0.40, "knn.k20.top1": 0.45, "linear.top5": 0.9}
    ok, reasons = registry.decide({"linear.top1": 0.52, "knn.top1": 0.39, "linear.top5": 0.5}, champion, RULES)
    assert ok, reasons  # knn within tolerance; top5 and knn.k20 are not gate metrics
    ok, reasons = registry.decide({"linear.top1": 0.505, "knn.top1": 0.40}, champion, RULES)
    assert not ok and "does not beat it by margin 0.01" in reasons[0]
    ok, reasons = registry.decide({"linear.top1": 0.60, "knn.top1": 0.37}, champion, RULES)
    assert not ok and any("knn.top1" in r and "regresses beyond tolerance" in r for r in reasons)
    ok, reasons = registry.decide({"linear.top1": 0.60}, champion, RULES)
    assert not ok and any("knn.top1: the champion has it" in r for r in reasons)
    ok, reasons = registry.decide({"knn.top1": 0.9}, champion, RULES)
    assert not ok and "candidate has no linear.top1" in reasons[0]
    # margin 0 still needs a strict improvement: a tie keeps the champion
    assert not registry.decide({"linear.top1": 0.5, "knn.top1": 0.4}, champion, registry.GateRules(margin=0.0))[0]


def test_gate_first_refused_promoted_regression_rollback(model):
    name, add = model
    v1 = add(linear=0.50, knn=0.40)
    first = registry.promote(name, "challenger", RULES)
    assert (first.decision, first.champion, first.previous_champion) == ("first", v1, None)

    v2 = add(linear=0.45, knn=0.41)  # worse on the primary metric
    refused = registry.promote(name, "challenger", RULES)
    assert (refused.decision, refused.champion) == ("refused", v1)
    tags = registry.get_version(name, v2).tags
    assert tags["promotion.decision"] == "refused" and tags["promotion.compared_to"] == str(v1)
    assert "linear.top1 0.4500 vs champion 0.5000" in tags["promotion.reasons"]
    assert "promotion.time" in tags

    v3 = add(linear=0.56, knn=0.39)  # better, knn within tolerance
    promoted = registry.promote(name, "challenger", RULES)
    assert (promoted.decision, promoted.champion, promoted.previous_champion) == ("promoted", v3, v1)
    assert registry.aliases(name) == {"champion": v3, "challenger": v3}

    v4 = add(linear=0.70, knn=0.30)  # much better primary, knn regresses 0.09 > tolerance
    regressed = registry.promote(name, "challenger", RULES)
    assert (regressed.decision, regressed.champion) == ("refused", v3)
    assert "knn.top1 0.3000 vs 0.3900 (-0.0900): regresses beyond tolerance" in registry.get_version(name, v4).tags[
        "promotion.reasons"
    ]

    assert registry.promote(name, v3, RULES).decision == "unchanged"
    assert registry.champion_stack(name) == [v1, v3]

    back = registry.rollback(name)
    assert (back.decision, back.champion, back.previous_champion) == ("rolled_back", v1, v3)
    assert registry.aliases(name)["champion"] == v1 and registry.champion_stack(name) == [v1]
    assert registry.get_version(name, v3).tags["promotion.decision"] == "rolled_back"
    with pytest.raises(registry.RegistryError, match="no previous one to restore"):
        registry.rollback(name)
    actions = [(e["action"], e["version"]) for e in registry.champion_history(name)]
    assert actions == [("first", v1), ("refused", v2), ("promoted", v3), ("refused", v4), ("rollback", v1)]

    forced = registry.promote(name, v4, RULES, force=True)
    assert (forced.decision, forced.champion) == ("forced", v4) and forced.reasons[0] == "--force"


def test_clear_errors(model):
    name, add = model
    with pytest.raises(registry.RegistryError, match=f"registered model '{name}' does not exist"):
        registry.promote(name, "challenger", RULES)
    add(linear=0.5, knn=0.4)
    with pytest.raises(registry.RegistryError, match="has no version 7"):
        registry.promote(name, 7, RULES)
    with pytest.raises(registry.RegistryError, match="has no alias 'champion'"):
        registry.get_version(name, "champion")
    with pytest.raises(registry.RegistryError, match="has no champion: nothing to roll back"):
        registry.rollback(name)


def test_cli_summary_json_and_strict_exit_code(model, tmp_path):
    name, add = model
    params = write_params(tmp_path / "params.yaml", model_name=name, margin=0.01, tolerance=0.02)
    add(linear=0.5, knn=0.4)
    result = runner.invoke(app, ["promote", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert f"{name} v1 is the first champion" in result.output

    add(linear=0.4, knn=0.4)
    result = runner.invoke(app, ["promote", "--params", str(params), "--json"])
    assert result.exit_code == 0, result.output  # a refusal is a decision, not an error
    doc = json.loads(result.output)
    assert (doc["decision"], doc["version"], doc["champion"]) == ("refused", 2, 1) and doc["reasons"]
    result = runner.invoke(app, ["promote", "--params", str(params), "--strict"])
    assert result.exit_code == 3 and "refused" in result.output

    result = runner.invoke(app, ["promote", "--params", str(params), "--version", "9"])
    assert result.exit_code == 1 and "has no version 9" in result.output
    result = runner.invoke(app, ["promote", "--params", str(params), "--rollback"])
    assert result.exit_code == 1 and "no previous one to restore" in result.output


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


@pytest.mark.slow  # two `slim promote` processes importing mlflow at once: 20-40 s on 2 shared cores
def test_two_concurrent_promotions_leave_one_champion(model, tmp_path):
    """Both promotions start while the lock is held, both wait, then run one after the other."""
    name, add = model
    params = write_params(tmp_path / "params.yaml", model_name=name, margin=0.01, tolerance=0.02)
    v1 = add(linear=0.50, knn=0.40)
    registry.promote(name, v1, RULES)
    v2, v3 = add(linear=0.55, knn=0.40), add(linear=0.60, knn=0.40)
    command = [sys.executable, "-m", "pipeline.cli", "promote", "--params", str(params), "--json", "--version"]
    with registry.promotion_lock():
        procs = [
            subprocess.Popen([*command, str(v)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for v in (v2, v3)
        ]
        waiting = queue.Queue()
        for proc in procs:
            threading.Thread(target=_lines, args=(proc.stderr, waiting), daemon=True).start()
        deadline, seen = time.monotonic() + 120, 0
        while seen < 2:
            try:
                line = waiting.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("the promotions never reached the lock")
            seen += "waiting for the promotion lock" in line
    outcomes = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, stdout
        outcomes.append(json.loads(stdout))

    assert registry.aliases(name)["champion"] == v3  # the best one, whichever order they ran in
    stack, history = registry.champion_stack(name), registry.champion_history(name)
    assert stack[-1] == v3 and stack in ([v1, v2, v3], [v1, v3])
    # the history replays to the stack: no update lost, each event saw the champion before it
    replay, champion = [], None
    for event in history:
        assert event["previous"] == champion or event["action"] == "refused"
        if event["action"] in ("first", "promoted"):
            replay.append(event["version"])
            champion = event["version"]
    assert replay == stack and len(history) == 3
    assert sorted(o["decision"] for o in outcomes) in (["promoted", "promoted"], ["promoted", "refused"])
