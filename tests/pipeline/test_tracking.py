"""MLflow tracking against real stores (the session SQLite file and a real `mlflow server`), with
real stage runs on the real NW-UCLA subset: lineage tags, parent/child nesting in one process,
across processes and per `dvc` process, params, per-step metrics, artifacts, failures, the off
switch, and `slim runs compare`."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline import tracking
from pipeline.cli import app
from pipeline.ingest import run as ingest
from pipeline.paths import REPO_ROOT
from pipeline.pretrain import run as pretrain
from pipeline.split import run as split

runner = CliRunner()
LINEAGE = (
    "git.commit",
    "git.dirty",
    "dvc.data_hash",
    "dataset",
    "host",
    "device",
    "torch.version",
    "slim.params_hash",
)
TINY_PROFILE = {
    "seed": 0,
    "batch_size": 8,
    "threads": 1,
    "num_workers": 0,
    "checkpoint_every": 4,
    "lr": 3.0e-2,
    "slim": {
        "steps": 4,
        "model": {
            "encoder": {"dim": 32, "depth": 1, "heads": 2},
            "num_prototypes": 64,
            "head_hidden_dim": 64,
            "head_bottleneck_dim": 32,
        },
        "views": {"local_frames": [32, 16, 8]},
    },
    "mae": {
        "steps": 4,
        "model": {
            "dim": 32,
            "depth": 1,
            "heads": 2,
            "decoder_dim": 32,
            "decoder_depth": 1,
            "decoder_heads": 2,
        },
    },
}


@pytest.fixture(autouse=True, scope="module")
def module_store(tmp_path_factory) -> Iterator[str]:
    """A store of this module's own: its tests look for the parent runs of this process, which other
    modules' stage runs (some failing on purpose) would otherwise have left in the session store."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def client() -> MlflowClient:
    return MlflowClient(tracking.tracking_uri())


def children(parent: str, dataset: str = "nw-ucla") -> dict[str, list]:
    """Child runs of `parent` by run name, oldest first."""
    runs = client().search_runs(
        [tracking.experiment(dataset)],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
        order_by=["attributes.start_time ASC"],
    )
    named: dict[str, list] = {}
    for run in runs:
        named.setdefault(run.info.run_name, []).append(run)
    return named


def artifact_paths(run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client().list_artifacts(run_id, path):
        found |= artifact_paths(run_id, item.path) if item.is_dir else {item.path}
    return found


def stage_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["pretrain"]["profiles"]["test"] = TINY_PROFILE
    params["pretrain"]["profile"] = "test"
    path = tmp_path_factory.mktemp("tracking-params") / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


# ----------------------------------------------------------------------------- configuration


def test_default_store_is_the_repo_sqlite_file_and_tracking_can_be_switched_off(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
    assert tracking._artifact_location("slim-x") == (REPO_ROOT / "mlartifacts" / "slim-x").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"
    assert tracking._artifact_location("slim-x") is None  # the server decides
    for value, on in (
        ("off", False),
        ("0", False),
        ("False", False),
        ("OFF", False),
        ("on", True),
        ("1", True),
    ):
        monkeypatch.setenv("SLIM_TRACKING", value)
        assert tracking.enabled() is on, value


def test_experiments_keep_artifacts_beside_the_store(module_store):
    experiment_id = tracking.experiment("t-artifacts")
    assert tracking.experiment("t-artifacts") == experiment_id
    found = client().get_experiment(experiment_id)
    db = Path(module_store.removeprefix("sqlite:///"))
    assert found.name == "slim-t-artifacts"
    assert found.artifact_location == (db.parent / "mlartifacts" / "slim-t-artifacts").as_uri()


def test_params_hash_follows_the_validated_sections_only(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(params, sort_keys=True))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    base = tracking.params_hash(tmp_path / "a.yaml")
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert tracking.params_hash(tmp_path / "b.yaml") == base
    params["ingest"]["workers"] = 3  # outside the hashed sections
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(params))
    assert tracking.params_hash(tmp_path / "c.yaml") == base
    params["pretrain"]["profiles"]["demo"]["slim"]["steps"] += 1
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(params))
    assert tracking.params_hash(tmp_path / "d.yaml") != base
    assert tracking.params_hash(tmp_path / "d.yaml", sections=("ingest",)) != tracking.params_hash(
        tmp_path / "a.yaml", sections=("ingest",)
    )


def test_data_hash_reads_dvc_lock_only_while_it_is_current(tmp_path, monkeypatch, ucla_subset):
    data = tmp_path / "sequences.parquet"
    data.write_bytes(ucla_subset["data"].read_bytes())
    lock = tmp_path / "dvc.lock"
    monkeypatch.setattr(tracking, "DVC_LOCK", lock)
    assert tracking.data_hash(data) == md5(data)  # no dvc.lock
    outs = [{"path": str(data), "hash": "md5", "md5": "0" * 32, "size": data.stat().st_size}]
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"ingest@x": {"outs": outs}}}))
    assert tracking.data_hash(data) == "0" * 32  # DVC's record, written after the file
    os.utime(data, (lock.stat().st_mtime + 10,) * 2)
    assert tracking.data_hash(data) == md5(data)  # the file changed after DVC recorded it
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tracking.data_hash(tmp_path / "nope.parquet")


def test_dvc_lock_excerpt_is_the_stage_and_its_upstream(tmp_path, monkeypatch):
    lock = tmp_path / "dvc.lock"
    stages = {
        "ingest@a": {"cmd": "i", "outs": [{"path": "data/a.parquet", "md5": "1"}]},
        "ingest@b": {"cmd": "j", "outs": [{"path": "data/b.parquet", "md5": "2"}]},
        "split@a": {
            "cmd": "s",
            "deps": [{"path": "data/a.parquet", "md5": "1"}],
            "outs": [{"path": "s.json", "md5": "3"}],
        },
    }
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    monkeypatch.setattr(tracking, "DVC_LOCK", lock)
    excerpt = yaml.safe_load(tracking.dvc_lock_excerpt("split@a"))["stages"]
    assert excerpt == {"split@a": stages["split@a"], "ingest@a": stages["ingest@a"]}
    assert tracking.dvc_lock_excerpt("pretrain@slim") is None


# ----------------------------------------------------------------------------- stage runs


def test_ingest_and_split_nest_under_one_parent_with_lineage(ucla_subset, tmp_path):
    summary = ingest("nw-ucla", ucla_subset["raw"], tmp_path / "pq", 0.0, 1, progress=False)
    data = tmp_path / "pq" / "sequences.parquet"
    counts = split("ucla-xview", data, tmp_path / "split.json")

    runs = client().search_runs(
        [tracking.experiment("nw-ucla")], order_by=["attributes.start_time DESC"], max_results=10
    )
    split_run = next(r for r in runs if r.info.run_name == "split@ucla-xview")
    ingest_run = next(r for r in runs if r.info.run_name == "ingest@nw-ucla")
    parent = client().get_run(split_run.data.tags["mlflow.parentRunId"])
    assert ingest_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.tags["slim.run_kind"] == "pipeline"
    assert parent.info.status == "RUNNING"  # until `register` (or the next pipeline run) closes it

    for run in (ingest_run, split_run):
        tags = run.data.tags
        assert set(LINEAGE) <= set(tags), run.info.run_name
        assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["git.commit"])
        assert tags["git.dirty"] in ("true", "false", "unknown")
        assert tags["dvc.data_hash"] == md5(data)  # the Parquet ingest wrote, split read
        assert (tags["dataset"], tags["device"]) == ("nw-ucla", "cpu")
        assert tags["slim.params_hash"] == tracking.params_hash()
        assert tags["slim.stage"] == run.info.run_name
        assert run.info.status == "FINISHED"
    assert ingest_run.data.params["format"] == "nw-ucla"
    assert float(ingest_run.data.params["max_bad_fraction"]) == 0.0
    assert ingest_run.data.metrics["sequences"] == summary["sequences"] == 124
    assert "labels.0" not in ingest_run.data.metrics
    assert {"summary.json", "quarantine.jsonl"} <= artifact_paths(ingest_run.info.run_id)
    assert (split_run.data.metrics["train"], split_run.data.metrics["test"]) == (
        counts["train"],
        counts["test"],
    )


def test_too_many_bad_files_fail_the_run_with_the_quarantine_report(ucla_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = sorted(ucla_dir.glob("*.json"))[0]
    (raw / good.name).symlink_to(good)
    (raw / "a01_s01_e99_v01.json").write_text('{"not": "a skeleton"')
    with tracking.pipeline_run("nw-ucla") as parent, pytest.raises(ValueError, match="malformed"):
        ingest("nw-ucla", raw, tmp_path / "pq", 0.0, 1, progress=False)
    (run,) = children(parent)["ingest@nw-ucla"]
    assert run.info.status == "FAILED"
    assert {"quarantine.jsonl", "summary.json"} <= artifact_paths(run.info.run_id)
    report = client().download_artifacts(run.info.run_id, "quarantine.jsonl", str(tmp_path))
    assert "a01_s01_e99_v01.json" in Path(report).read_text()
    assert client().get_run(parent).info.status == "FINISHED"  # the error did not reach the flow


def test_a_failing_stage_fails_its_run_and_its_parent():
    with pytest.raises(RuntimeError, match="boom"), tracking.stage_run("boom", dataset="t-fail") as run:
        raise RuntimeError("boom")
    failed = client().get_run(run.info.run_id)
    assert failed.info.status == "FAILED"
    assert client().get_run(failed.data.tags["mlflow.parentRunId"]).info.status == "FAILED"
    # a flow's parent fails when the failure reaches it, and its env var is restored
    with pytest.raises(RuntimeError), tracking.pipeline_run("t-fail") as parent:
        with tracking.stage_run("boom", dataset="t-fail"):
            raise RuntimeError("boom")
    assert client().get_run(parent).info.status == "FAILED"
    assert "SLIM_PARENT_RUN_ID" not in os.environ


def test_closing_a_repro_ends_its_parents_in_every_dataset_experiment():
    """One `dvc repro` ingests two datasets, so it owns a parent in each one's experiment; `register`
    closes its own and must not leave the other RUNNING."""
    parents = {dataset: tracking.parent_run_id(dataset) for dataset in ("t-close-a", "t-close-b")}
    with tracking.stage_run("ingest@b", dataset="t-close-b"):
        pass
    assert tracking.close_pipeline_run("t-close-a") == parents["t-close-a"]
    assert {d: client().get_run(r).info.status for d, r in parents.items()} == {
        "t-close-a": "FINISHED",
        "t-close-b": "FINISHED",
    }
    assert tracking.close_pipeline_run("t-close-a") is None  # nothing of this owner left open


def test_pipeline_run_nests_a_stage_run_in_a_child_process(ucla_subset, tmp_path):
    with tracking.pipeline_run("nw-ucla", name="flow test") as parent:
        assert os.environ["SLIM_PARENT_RUN_ID"] == parent
        done = subprocess.run(
            stage_cli("split", "ucla-xview", str(ucla_subset["data"]), str(tmp_path / "split.json")),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert tracking.close_pipeline_run("nw-ucla") is None  # the flow owns its parent
    assert "SLIM_PARENT_RUN_ID" not in os.environ
    (run,) = children(parent)["split@ucla-xview"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["dvc.data_hash"] == md5(ucla_subset["data"])
    ended = client().get_run(parent)
    assert (ended.info.run_name, ended.info.status) == ("flow test", "FINISHED")


@pytest.mark.slow  # two stage processes: about 10 s each on a loaded 2-core machine
def test_stages_of_one_dvc_process_share_a_parent_closed_after_it_exits(ucla_subset, tmp_path):
    """A stand-in for `dvc repro`: a script named dvc runs two stage commands one after the other,
    each in its own process with DVC_STAGE set, as DVC does."""
    dvc = tmp_path / "bin" / "dvc"
    dvc.parent.mkdir()
    out = tmp_path / "pq"
    dvc.write_text(
        textwrap.dedent(f"""\
        #!/bin/bash
        set -e
        DVC_STAGE=ingest@nw-ucla {" ".join(stage_cli("ingest", "--format", "nw-ucla", str(ucla_subset["raw"]), str(out), "--workers", "1", "--no-progress"))}
        DVC_STAGE=split@ucla-xview {" ".join(stage_cli("split", "ucla-xview", str(out / "sequences.parquet"), str(tmp_path / "split.json")))}
        """)
    )
    dvc.chmod(0o755)
    done = subprocess.run([str(dvc), "repro"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    query = "tags.`slim.run_kind` = 'pipeline' and attributes.run_name LIKE 'dvc repro %'"
    (parent,) = client().search_runs([tracking.experiment("nw-ucla")], filter_string=query)
    assert set(children(parent.info.run_id)) == {"ingest@nw-ucla", "split@ucla-xview"}
    assert parent.data.tags["slim.owner"].split(":")[1] != str(os.getpid())
    assert parent.info.status == "RUNNING"  # nothing closed it: no `register` stage ran
    tracking.parent_run_id("nw-ucla")  # the next stage on this host closes the abandoned parent
    assert client().get_run(parent.info.run_id).info.status == "FINISHED"


def test_pretrain_logs_params_step_metrics_figures_and_config(ucla_subset, tiny_params, tmp_path):
    out = tmp_path / "slim"
    with tracking.pipeline_run("nw-ucla") as parent:
        metrics = pretrain(
            "slim", ucla_subset["split"], ucla_subset["data"], out, params_path=tiny_params, progress=False
        )
    (run,) = children(parent)["pretrain@slim"]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["profile"], params["method"], params["slim.steps"]) == ("test", "slim", "4")
    assert params["slim.model.encoder.dim"] == "32"
    assert json.loads(params["slim.views.local_frames"]) == [32, 16, 8]
    assert json.loads(params["weight_decay"]) == [0.04, 0.2]
    assert not any(k.startswith("mae.") for k in params)
    assert run.data.tags["dvc.data_hash"] == md5(ucla_subset["data"])
    assert run.data.tags["slim.params_hash"] == tracking.params_hash(tiny_params)

    with (out / "plots.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    for column in ("loss", "dino", "lr", "clips_per_s"):
        history = client().get_metric_history(run.info.run_id, f"train/{column}")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (int(r["step"]), pytest.approx(float(r[column]))) for r in rows
        ]
    assert run.data.metrics["final_loss"] == pytest.approx(metrics["final_loss"])
    assert run.data.metrics["final.dino"] == pytest.approx(metrics["final"]["dino"])

    logged = artifact_paths(run.info.run_id)
    assert {"config.yaml", "metrics.json", "plots.csv", "loss.png", "masking.png", "views.png"} <= logged
    for figure in ("loss.png", "masking.png", "views.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = yaml.safe_load(
        Path(client().download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    )
    assert (
        config["model"]["encoder"]["dim"] == 32 and config["model"]["encoder"]["patch_size"] == 8
    )  # defaults filled
    assert config["views"]["local_frames"] == [32, 16, 8]


def test_tracking_off_records_nothing(ucla_subset, tmp_path, monkeypatch):
    before = {
        e.experiment_id: len(client().search_runs([e.experiment_id])) for e in client().search_experiments()
    }
    monkeypatch.setenv("SLIM_TRACKING", "off")
    split("ucla-xview", ucla_subset["data"], tmp_path / "split.json")
    with tracking.pipeline_run("nw-ucla") as parent, tracking.stage_run("x", dataset="nw-ucla") as run:
        tracking.log_metrics({"a": 1.0})
        tracking.log_artifacts([tmp_path / "split.json"])
    assert (parent, run, tracking.parent_run_id("nw-ucla"), tracking.close_pipeline_run("nw-ucla")) == (
        None,
    ) * 4
    assert "SLIM_PARENT_RUN_ID" not in os.environ
    monkeypatch.delenv("SLIM_TRACKING")
    after = {
        e.experiment_id: len(client().search_runs([e.experiment_id])) for e in client().search_experiments()
    }
    assert after == before
    result = runner.invoke(app, ["runs", "compare"], env={"SLIM_TRACKING": "off"})
    assert result.exit_code == 1 and "tracking is off" in result.output


# ----------------------------------------------------------------------------- evaluations and `slim runs compare`


def write_report(
    root: Path, protocol: str, encoder: str, top1: float, k20: tuple[float, float] | None = None
) -> Path:
    """A report folder as `slim evaluate` writes it (the real metrics.json layout)."""
    out = root / protocol / encoder
    out.mkdir(parents=True)
    doc = {
        "protocol": protocol,
        "encoder": encoder,
        "split": "ucla-xview",
        "top1": top1,
        "top5": None,
        "num_test": 464,
    }
    if k20 is not None:
        doc |= {"knn_k": 1, "knn": {"k1": {"top1": top1}, "k20": {"top1": k20[0], "top5": k20[1]}}}
    else:
        doc |= {"top5": min(top1 + 0.3, 1.0), "config": {"epochs": 100, "lr": 0.01}}
    doc["per_class"] = {"a01": 0.5, "a02": 1.0}
    (out / "metrics.json").write_text(json.dumps(doc))
    (out / "per_class.csv").write_text("action,accuracy\na01,0.5\na02,1.0\n")
    return out


def evaluate_runs(dataset: str, root: Path, reports: list[tuple]) -> str:
    """A pipeline run with one `evaluate@<protocol>-<encoder>` child per report (log_evaluation)."""
    with tracking.pipeline_run(dataset) as parent:
        for protocol, encoder, *values in reports:
            out = write_report(root / parent, protocol, encoder, *values)
            with tracking.stage_run(f"evaluate@{protocol}-{encoder}", dataset=dataset):
                tracking.log_evaluation(protocol, encoder, out)
    return parent


REPORTS = [
    ("linear", "slim", 0.41),
    ("linear", "mae", 0.35),
    ("linear", "raw", 0.55),
    ("knn", "slim", 0.46, (0.36, 0.86)),
    ("knn", "raw", 0.61, (0.51, 0.91)),
    ("knn", "random", 0.47, (0.33, 0.84)),
    ("semi10", "supervised", 0.52),
]
TABLE = {
    "slim": {
        "linear/top1": 0.41,
        "linear/top5": 0.71,
        "knn/top1": 0.46,
        "knn/top1_k1": 0.46,
        "knn/top1_k20": 0.36,
        "knn/top5_k20": 0.86,
    },
    "mae": {"linear/top1": 0.35, "linear/top5": 0.65},
    "raw": {
        "linear/top1": 0.55,
        "linear/top5": 0.85,
        "knn/top1": 0.61,
        "knn/top1_k1": 0.61,
        "knn/top1_k20": 0.51,
        "knn/top5_k20": 0.91,
    },
    "random": {"knn/top1": 0.47, "knn/top1_k1": 0.47, "knn/top1_k20": 0.33, "knn/top5_k20": 0.84},
    "supervised": {"semi10/top1": 0.52, "semi10/top5": 0.82},
}
COLUMNS = [
    "linear/top1",
    "linear/top5",
    "knn/top1",
    "knn/top1_k1",
    "knn/top1_k20",
    "knn/top5_k20",
    "semi10/top1",
    "semi10/top5",
]


def parse_table(output: str) -> tuple[list[str], dict[str, dict[str, float]]]:
    lines = output.strip().splitlines()
    header = lines[1].split()
    assert header[0] == "encoder"
    rows = {}
    for line in lines[2:]:
        encoder, *cells = line.split()
        rows[encoder] = {c: float(v) for c, v in zip(header[1:], cells, strict=True) if v != "-"}
    return header[1:], rows


def test_log_evaluation_tags_metrics_and_reports(tmp_path):
    parent = evaluate_runs("t-eval", tmp_path, [("knn", "raw", 0.61, (0.51, 0.91))])
    (run,) = children(parent, "t-eval")["evaluate@knn-raw"]
    assert (run.data.tags["slim.protocol"], run.data.tags["slim.encoder"]) == ("knn", "raw")
    assert run.data.metrics == {
        "knn/top1": 0.61,
        "knn/num_test": 464.0,
        "knn/knn_k": 1.0,
        "knn/top1_k1": 0.61,
        "knn/top1_k20": 0.51,
        "knn/top5_k20": 0.91,
    }  # per_class and the None top5 left out
    assert {"metrics.json", "per_class.csv"} <= artifact_paths(run.info.run_id)


def test_runs_compare_prints_one_row_per_encoder(tmp_path):
    older = evaluate_runs("t-compare", tmp_path, [("linear", "slim", 0.10)])
    newest = evaluate_runs("t-compare", tmp_path, REPORTS)
    result = runner.invoke(app, ["runs", "compare", "--dataset", "t-compare"])
    assert result.exit_code == 0, result.output
    assert newest in result.output.splitlines()[0]
    columns, rows = parse_table(result.output)
    assert columns == COLUMNS
    assert list(rows) == ["slim", "mae", "raw", "random", "supervised"]
    assert rows == {
        e: {c: pytest.approx(v, abs=5e-5) for c, v in values.items()} for e, values in TABLE.items()
    }

    result = runner.invoke(app, ["runs", "compare", "--dataset", "t-compare", "--run", older])
    assert result.exit_code == 0, result.output
    assert parse_table(result.output) == (
        ["linear/top1", "linear/top5"],
        {"slim": {"linear/top1": 0.1, "linear/top5": 0.4}},
    )
    for args, message in (
        (["--dataset", "t-compare", "--run", "0" * 32], "no run"),
        (["--dataset", "t-nothing-here"], "no experiment 'slim-t-nothing-here'"),
    ):
        result = runner.invoke(app, ["runs", "compare", *args])
        assert result.exit_code == 1 and message in result.output, result.output


def test_a_rerun_evaluation_replaces_the_earlier_one_and_failed_ones_are_ignored(tmp_path):
    with tracking.pipeline_run("t-rerun") as parent:
        for top1 in (0.2, 0.3):
            with tracking.stage_run("evaluate@linear-slim", dataset="t-rerun"):
                tracking.log_evaluation(
                    "linear", "slim", write_report(tmp_path / str(top1), "linear", "slim", top1)
                )
        with pytest.raises(RuntimeError), tracking.stage_run("evaluate@linear-mae", dataset="t-rerun"):
            tracking.log_evaluation("linear", "mae", write_report(tmp_path, "linear", "mae", 0.9))
            raise RuntimeError("interrupted")
    table = tracking.compare("t-rerun", parent)
    assert table.rows == {"slim": {"linear/top1": 0.3, "linear/top5": pytest.approx(0.6)}}


# ----------------------------------------------------------------------------- a real `mlflow server`


@pytest.mark.slow  # the server takes 15-50 s to start on a loaded 2-core machine
def test_stage_runs_and_compare_through_a_real_server(mlflow_server, ucla_subset, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with tracking.pipeline_run("nw-ucla") as parent:
        split("ucla-xview", ucla_subset["data"], tmp_path / "split.json")
        plots = tmp_path / "plots.csv"
        plots.write_text("step,loss,lr\n" + "".join(f"{s},{1.0 / (s + 1)},{s * 1e-3}\n" for s in range(1500)))
        with tracking.stage_run("pretrain@slim", dataset="nw-ucla", params={"a": {"b": 1}}):
            tracking.log_step_metrics(plots)
            tracking.log_artifacts([plots, tmp_path / "missing.png"])
        for protocol, encoder, *values in REPORTS[:3]:
            with tracking.stage_run(f"evaluate@{protocol}-{encoder}", dataset="nw-ucla"):
                tracking.log_evaluation(protocol, encoder, write_report(tmp_path, protocol, encoder, *values))
    assert tracking.experiment("nw-ucla") == client().get_experiment_by_name("slim-nw-ucla").experiment_id
    assert client().get_experiment_by_name("slim-nw-ucla").artifact_location.startswith("mlflow-artifacts:")
    named = children(parent)
    assert set(named) == {
        "split@ucla-xview",
        "pretrain@slim",
        "evaluate@linear-slim",
        "evaluate@linear-mae",
        "evaluate@linear-raw",
    }
    (split_run,) = named["split@ucla-xview"]
    assert set(LINEAGE) <= set(split_run.data.tags)
    (pretrain_run,) = named["pretrain@slim"]
    assert pretrain_run.data.params == {"a.b": "1"}
    history = client().get_metric_history(pretrain_run.info.run_id, "train/loss")
    assert len(history) == 1500 and sorted(history, key=lambda m: m.step)[-1].value == pytest.approx(1 / 1500)
    assert "plots.csv" in artifact_paths(pretrain_run.info.run_id)  # missing.png skipped
    result = runner.invoke(app, ["runs", "compare"])
    assert result.exit_code == 0, result.output
    _, rows = parse_table(result.output)
    assert rows == {
        e: {"linear/top1": TABLE[e]["linear/top1"], "linear/top5": TABLE[e]["linear/top5"]}
        for e in ("slim", "mae", "raw")
    }


# ----------------------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_processes_starting_at_once_on_a_fresh_store_all_track(tmp_path):
    """Three stages starting together on a store that does not exist yet: the tables are created
    once (under the store lock) and every run lands in the one experiment."""
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"}
    env.pop("SLIM_PARENT_RUN_ID", None)
    code = (
        "import sys; from pipeline import tracking\n"
        "with tracking.stage_run(f'stage-{sys.argv[1]}', dataset='t-race'):\n"
        "    tracking.log_metrics({'i': float(sys.argv[1])})\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    fresh = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (found,) = [e for e in fresh.search_experiments() if e.name == "slim-t-race"]
    runs = fresh.search_runs([found.experiment_id])
    stages = sorted(r.info.run_name for r in runs if r.data.tags.get("slim.run_kind") == "stage")
    assert stages == ["stage-0", "stage-1", "stage-2"]
    assert (
        len({r.data.tags["mlflow.parentRunId"] for r in runs if r.data.tags.get("slim.run_kind") == "stage"})
        == 1
    )
