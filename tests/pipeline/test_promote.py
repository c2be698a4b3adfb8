"""The promotion gate on a real SQLite MLflow store: first champion, refusals and their reasons,
promotion, rollback, the CLI's exit codes, two concurrent promotions, and the anchor floor (a
challenger must beat the anchors measured in its DAG run, the first one too).

One tiny real encoder is logged once (input example: real clips); each test registers it under its
own model name with metric (and anchor) tags from hand-written metrics.json files: the gate
compares numbers.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from pipeline import registry
from pipeline.cli import app
from pipeline.params import ParamsError, RegistryParams
from pipeline.paths import REPO_ROOT
from pipeline.register import collect_anchor_metrics, collect_metrics, score_tags
from pipeline.register import run as register
from tests.pipeline.test_registry import (  # noqa: F401
    one_torch_thread,
    register_with,
    save_tiny,
    shared_store,
    write_metrics,
    write_params,
)

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
    assert not ok and "does not beat it by margin 0.01" in reasons[1]  # reasons[0]: the anchors
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
    params = write_params(tmp_path / "params.yaml", model_name=name, margin=0.01, tolerance=0.02, floor_anchors=[])
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
    params = write_params(tmp_path / "params.yaml", model_name=name, margin=0.01, tolerance=0.02, floor_anchors=[])
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


# ----------------------------------------------------------------------------- the anchor floor

FLOOR = registry.GateRules("linear.top1", 0.01, 0.02, floor_anchors=("random",), floor_margin=0.05)
SAME_RUN = {"split": "ucla-xview", "profile": "test", "seed": 0}


def write_reports(reports: Path, encoder: str, top1: dict[str, float], **fields) -> Path:
    """Hand-written reports/<protocol>/<encoder>/metrics.json as `slim evaluate` writes them (the
    evaluate@ and anchor@ stages): protocol, layout, split, profile, seed, top1/top5, kNN per k."""
    for protocol, value in top1.items():
        doc = {"protocol": protocol, "encoder": encoder, "layout": "ucla20", **SAME_RUN, "top1": value,
               "top5": min(1.0, value + 0.3), **fields}  # fmt: skip
        if protocol == "knn":
            doc.setdefault("knn", {"k1": {"top1": value, "top5": min(1.0, value + 0.3)}})
        out = reports / protocol / encoder / "metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc))
    return reports


@pytest.fixture
def anchored(model, mlflow_store, ucla_subset, tmp_path_factory, tmp_path):
    """(name, add(top1, anchors) -> version): versions tagged as `slim register` tags them from the
    encoder's and the anchors' reports of one DAG run (`{protocol: top1}`, `{anchor: {protocol: top1}}`)."""
    name, _ = model
    uri = shared_store(mlflow_store, tmp_path_factory, ucla_subset["data"])["uri"]
    counter = iter(range(1000))

    def add(top1: dict[str, float], anchors: dict[str, dict[str, float]]) -> int:
        reports = write_reports(tmp_path / f"dag{next(counter)}", "slim", top1)
        for anchor, scores in anchors.items():
            write_reports(reports, anchor, scores)
        metrics = collect_metrics(reports, list(top1), "slim", "ucla20")
        measured = collect_anchor_metrics(reports, list(top1), "slim", "ucla20", evaluated=list(anchors), enforced=[])
        return registry.register_version(uri, name, score_tags(metrics, measured))

    return name, add


def test_floor_states_every_anchor_and_needs_the_margin():
    anchors = {"random": {"linear.top1": 0.598}, "raw": {"linear.top1": 0.760}}
    ok, line = registry.anchor_floor(0.652, anchors, FLOOR)
    assert ok and line == (
        "anchor floor passed: linear.top1 0.6520 vs random 0.5980 (+0.0540, floor +0.05: pass); "
        "vs raw 0.7600 (-0.1080, not enforced)"
    )
    ok, line = registry.anchor_floor(0.640, anchors, FLOOR)  # beats random, but by 0.042 < 0.05
    assert not ok and line.startswith("anchor floor failed: ") and "vs random 0.5980 (+0.0420, floor +0.05: fail)" in line
    ok, line = registry.anchor_floor(0.652, anchors, dataclasses.replace(FLOOR, floor_anchors=("random", "raw")))
    assert not ok and "vs raw 0.7600 (-0.1080, floor +0.05: fail)" in line
    # margin 0 still needs a strict improvement: the random-init encoder's score is no floor cleared
    assert not registry.anchor_floor(0.598, anchors, dataclasses.replace(FLOOR, floor_margin=0.0))[0]
    # an enforced anchor not measured with the version fails; an unmeasured unenforced one is stated
    ok, line = registry.anchor_floor(0.9, {"raw": {"linear.top1": 0.7}}, FLOOR)
    assert not ok and "vs random: not measured with this version (floor: fail" in line and "vs raw 0.7000" in line
    ok, line = registry.anchor_floor(0.9, {"random": {"linear.top1": 0.5}}, FLOOR)
    assert ok and line.endswith("vs raw: not measured (not enforced)")
    # no floor: still stated, never refusing
    ok, line = registry.anchor_floor(0.1, anchors, RULES)
    assert ok and line.startswith("no anchor floor: linear.top1 0.1000 vs random 0.5980 (-0.4980, not enforced)")


def test_decide_applies_the_floor_with_and_without_champion():
    below = {"random": {"linear.top1": 0.32}, "raw": {"linear.top1": 0.40}}
    ok, reasons = registry.decide({"linear.top1": 0.30}, None, FLOOR, below)
    assert not ok and reasons[0].startswith("anchor floor failed") and reasons[1] == "no champion yet"
    ok, reasons = registry.decide({"linear.top1": 0.45}, None, FLOOR, below)
    assert ok and "vs random 0.3200 (+0.1300, floor +0.05: pass)" in reasons[0] and "vs raw 0.4000" in reasons[0]
    # beats the champion but not the anchors of its own DAG run: refused
    champion = {"linear.top1": 0.50, "knn.top1": 0.40}
    ok, reasons = registry.decide({"linear.top1": 0.60, "knn.top1": 0.40}, champion, FLOOR, {"random": {"linear.top1": 0.58}})
    assert not ok and reasons[0].startswith("anchor floor failed") and "beats it by >= margin" in reasons[1]
    ok, reasons = registry.decide({"linear.top1": 0.60, "knn.top1": 0.40}, champion, FLOOR, {"random": {"linear.top1": 0.50}})
    assert ok, reasons


def test_floor_refuses_a_first_version_below_random_then_crowns_one_above(anchored):
    name, add = anchored
    # learned nothing: below the random-init encoder of the same DAG run; no champion to compare with
    v1 = add({"linear": 0.10, "knn": 0.12}, {"random": {"linear": 0.12, "knn": 0.11}, "raw": {"linear": 0.30, "knn": 0.25}})
    refused = registry.promote(name, "challenger", FLOOR)
    assert (refused.decision, refused.champion, refused.previous_champion) == ("refused", None, None)
    assert "champion" not in registry.aliases(name) and registry.champion_stack(name) == []
    assert refused.summary().startswith(f"{name} v{v1} refused: there is still no champion")
    tags = registry.get_version(name, v1).tags
    assert tags["promotion.decision"] == "refused" and tags["promotion.compared_to"] == "none"
    assert (
        "anchor floor failed: linear.top1 0.1000 vs random 0.1200 (-0.0200, floor +0.05: fail); "
        "vs raw 0.3000 (-0.2000, not enforced)"
    ) in tags["promotion.reasons"]

    v2 = add({"linear": 0.20, "knn": 0.15}, {"random": {"linear": 0.12, "knn": 0.11}, "raw": {"linear": 0.30, "knn": 0.25}})
    first = registry.promote(name, "challenger", FLOOR)
    assert (first.decision, first.champion, first.previous_champion) == ("first", v2, None)
    assert first.reasons == [
        "anchor floor passed: linear.top1 0.2000 vs random 0.1200 (+0.0800, floor +0.05: pass); "
        "vs raw 0.3000 (-0.1000, not enforced)",
        "no champion yet",
    ]

    # beats the champion by 0.06, but the random anchor of its own run by only 0.02 < floor_margin
    v3 = add({"linear": 0.26, "knn": 0.15}, {"random": {"linear": 0.24, "knn": 0.11}})
    refused = registry.promote(name, "challenger", FLOOR)
    assert (refused.decision, refused.champion) == ("refused", v2)
    assert refused.reasons[0].startswith("anchor floor failed") and "vs raw: not measured (not enforced)" in refused.reasons[0]
    assert "beats it by >= margin" in refused.reasons[1]

    forced = registry.promote(name, v3, FLOOR, force=True)
    assert (forced.decision, forced.champion, forced.previous_champion) == ("forced", v3, v2)
    assert forced.reasons[0] == "--force" and forced.reasons[1].startswith("anchor floor failed")
    assert registry.get_version(name, v3).tags["promotion.decision"] == "forced"
    actions = [(e["action"], e["version"]) for e in registry.champion_history(name)]
    assert actions == [("refused", v1), ("first", v2), ("refused", v3), ("forced", v3)]


def test_learned_nothing_ends_without_champion(ucla_subset, tmp_path, monkeypatch):
    """The real `register` stage records the anchors of its DAG run; `slim promote` refuses an
    encoder that does not beat the random-init one, says there is no champion; --force overrides."""
    # a store of its own: register closes the pipeline's parent run of this process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = "floor-demo"
    params = write_params(tmp_path / "params.yaml", model_name=name, floor_anchors=["random"], floor_margin=0.0)
    reports = write_reports(tmp_path / "reports", "slim", {"linear": 0.10, "knn": 0.12})
    write_reports(reports, "random", {"linear": 0.12, "knn": 0.13})  # raw: in evaluate.dag.anchors, not run
    encoder = save_tiny(tmp_path / "encoder.pt")
    doc = register(encoder, ucla_subset["data"], reports, tmp_path / "r.json", params_path=params)
    tags = registry.get_version(name, doc["version"]).tags
    assert float(tags["anchor.random.linear.top1"]) == 0.12 and float(tags["anchor.random.knn.k1.top1"]) == 0.13
    assert float(tags["metric.linear.top1"]) == 0.10 and not any(k.startswith("anchor.raw.") for k in tags)

    result = runner.invoke(app, ["promote", "--params", str(params)])
    assert result.exit_code == 0, result.output  # a refusal is a decision
    assert f"{name} v1 refused: there is still no champion" in result.output
    assert (
        "anchor floor failed: linear.top1 0.1000 vs random 0.1200 (-0.0200, floor +0: fail); "
        "vs raw: not measured (not enforced)"
    ) in result.output
    assert "champion" not in registry.aliases(name)
    assert runner.invoke(app, ["promote", "--params", str(params), "--strict"]).exit_code == 3

    result = runner.invoke(app, ["promote", "--params", str(params), "--force", "--json"])
    assert result.exit_code == 0, result.output
    forced = json.loads(result.output)
    assert (forced["decision"], forced["champion"], forced["previous_champion"]) == ("forced", 1, None)
    assert forced["reasons"][0] == "--force" and forced["reasons"][1].startswith("anchor floor failed")
    assert registry.aliases(name)["champion"] == 1


def test_register_reads_the_anchors_of_the_same_dag_run(tmp_path):
    reports = write_reports(tmp_path / "reports", "slim", {"linear": 0.5, "knn": 0.4})
    write_reports(reports, "random", {"linear": 0.2, "knn": 0.1})
    protocols = ["linear", "knn"]
    measured = collect_anchor_metrics(reports, protocols, "slim", "ucla20", evaluated=["raw", "random"], enforced=["random"])
    assert measured == {"random": {"linear.top1": 0.2, "linear.top5": 0.5, "knn.top1": 0.1, "knn.top5": 0.4,
                                   "knn.k1.top1": 0.1, "knn.k1.top5": 0.4}}  # fmt: skip
    assert score_tags({"linear.top1": 0.5}, measured)["anchor.random.knn.k1.top1"] == 0.1

    # an enforced anchor's missing report names the file and the fix
    with pytest.raises(ValueError, match=r"linear/raw/metrics.json does not exist: registry.floor_anchors needs "
                                         r"anchor 'raw'.*evaluate.dag.anchors"):  # fmt: skip
        collect_anchor_metrics(reports, protocols, "slim", "ucla20", evaluated=["raw", "random"], enforced=["raw"])
    # a floor anchor the DAG does not evaluate
    with pytest.raises(ParamsError, match=r"registry.floor_anchors has 'random'.*add 'random' to evaluate.dag.anchors"):
        collect_anchor_metrics(reports, protocols, "slim", "ucla20", evaluated=["raw"], enforced=["random"])
    # an anchor evaluated on another split (or profile, or layout) is not the same DAG run
    write_reports(reports, "random", {"knn": 0.1}, split="ucla-xsub")
    with pytest.raises(ValueError, match=r"knn/random/metrics.json: split 'ucla-xsub', but the encoder's .* has "
                                         r"'ucla-xview'"):  # fmt: skip
        collect_anchor_metrics(reports, protocols, "slim", "ucla20", evaluated=["random"], enforced=[])
    write_reports(reports, "random", {"knn": 0.1}, profile="full")
    with pytest.raises(ValueError, match=r"profile 'full'"):
        collect_anchor_metrics(reports, protocols, "slim", "ucla20", evaluated=["random"], enforced=[])
    write_reports(reports, "random", {"knn": 0.1}, layout="ntu25")
    with pytest.raises(ValueError, match=r"evaluated on layout 'ntu25'"):
        collect_anchor_metrics(reports, protocols, "slim", "ucla20", evaluated=["random"], enforced=[])


def test_floor_params_are_strict(tmp_path):
    default = RegistryParams()
    assert (default.floor_anchors, default.floor_margin) == (["random"], 0.0)
    rules = registry.GateRules.from_settings(RegistryParams(floor_anchors=["random", "raw"], floor_margin=0.05, margin=0.01))
    assert (rules.floor_anchors, rules.floor_margin, rules.margin) == (("random", "raw"), 0.05, 0.01)
    for bad in (
        {"floor_anchors": ["supervised"]},
        {"floor_anchors": "random"},
        {"floor_anchors": ["random", "random"]},
        {"floor_margin": -0.01},
        {"floor_margin": 1.5},
        {"primary_metric": "semi10.top1"},  # the anchors are frozen-feature figures only
        {"floor_typo": 0.1},
    ):
        with pytest.raises(ValidationError):
            RegistryParams.model_validate(bad)
    assert RegistryParams(primary_metric="semi10.top1", floor_anchors=[]).floor_anchors == []
    assert RegistryParams(primary_metric="knn.k1.top1", floor_anchors=["raw"]).floor_anchors == ["raw"]
    with pytest.raises(ParamsError, match="listed twice"):
        registry.settings(write_params(tmp_path / "params.yaml", floor_anchors=["raw", "raw"]))
