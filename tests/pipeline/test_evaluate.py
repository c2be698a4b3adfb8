"""The evaluate stage on real NW-UCLA clips: every protocol for pretrained encoders and the anchors,
its reports, the raw-joints anchor against the library, and the clear errors."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.evaluate import load_eval_data, run
from pipeline.params import ParamsError, load_params
from pipeline.paths import REPO_ROOT
from slim.evaluation import class_balanced_subset, raw_joints_knn
from slim.export import save_encoder
from slim.layouts import get_layout
from slim.models import build
from tests.project import project_env

TINY = {"dim": 32, "depth": 1, "heads": 2}
TEST_PROFILE = {
    "seed": 0,
    "threads": 1,
    "batch_size": 32,
    "knn_ks": [1, 20],
    "linear": {"epochs": 20, "lr": 1.0e-2},
    "finetune": {"epochs": 2, "batch_size": 16, "lr": 1.0e-3},
    "semi1": {"fraction": 0.01, "epochs": 3},
    "semi10": {"fraction": 0.1, "epochs": 2},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORTS = ("metrics.json", "per_class.csv", "predictions.csv", "confusion.png", "embedding.png")
runner = CliRunner()


def tiny_params(path: Path, repo_params: dict) -> Path:
    """The repo's params with a tiny SLiM encoder config (for the anchors) and a quick `test` profile."""
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    pretrain = params["pretrain"]["profiles"][params["pretrain"]["profile"]]
    pretrain["slim"]["model"]["encoder"] = dict(TINY)
    params["evaluate"]["profiles"]["test"] = TEST_PROFILE
    params["evaluate"]["profile"] = "test"
    path.write_text(yaml.safe_dump(params))
    return path


def save_tiny(path: Path, method: str, layout: str, seed: int = 1) -> Path:
    """A tiny untrained encoder file (seed 1: not the random anchor's weights, which use seed 0)."""
    torch.manual_seed(seed)
    return save_encoder(path, method, layout, build(method, layout, **TINY))


@pytest.fixture(scope="module")
def ucla(ucla_subset, tmp_path_factory) -> dict[str, Path]:
    """The real NW-UCLA subset (ingested, split by ucla-xview); the test params; a tiny SLiM and MAE
    encoder and an NTU-layout one."""
    root = tmp_path_factory.mktemp("ucla-eval")
    return {
        "root": root,
        **ucla_subset,
        "params": tiny_params(root / "params.yaml", yaml.safe_load((REPO_ROOT / "params.yaml").read_text())),
        "slim": save_tiny(root / "slim.pt", "slim", "ucla20"),
        "mae": save_tiny(root / "mae.pt", "mae", "ucla20"),
        "ntu": save_tiny(root / "ntu.pt", "slim", "ntu25"),
    }


def evaluate(ucla, protocol: str, encoder: str, out: Path) -> dict:
    encoder = str(ucla[encoder]) if encoder in ("slim", "mae", "ntu") else encoder
    return run(protocol, encoder, ucla["split"], ucla["data"], out, params_path=ucla["params"])


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


COMBINATIONS = [
    ("linear", "raw"),
    ("linear", "random"),
    ("linear", "slim"),
    ("knn", "raw"),
    ("knn", "random:mae"),
    ("knn", "slim"),
    ("knn", "mae"),
    ("semi1", "slim"),
    ("semi10", "supervised"),
    ("semi10", "slim"),
    ("finetune", "supervised"),
    ("finetune", "mae"),
]


@pytest.mark.parametrize(("protocol", "encoder"), COMBINATIONS)
def test_every_protocol_writes_its_reports(ucla, tmp_path, protocol, encoder):
    metrics = evaluate(ucla, protocol, encoder, tmp_path)
    data = load_eval_data(ucla["split"], ucla["data"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(REPORTS)  # no temporary files left
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (
        metrics["protocol"] == protocol and metrics["split"] == "ucla-xview" and metrics["layout"] == "ucla20"
    )
    assert metrics["encoder"] == {"random": "random:slim", "supervised": "supervised:slim"}.get(
        encoder, encoder
    )
    assert metrics["num_classes"] == 10 and metrics["num_test"] == len(data.test.ids) > 20
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["wall_time_s"] > 0
    if metrics["top5"] is not None:
        assert metrics["top1"] <= metrics["top5"] <= 1.0
    assert protocol == "knn" or metrics["top5"] is not None  # a probe or head ranks all 10 classes

    per_class = read_csv(tmp_path / "per_class.csv")
    assert [row["action"] for row in per_class] == list(metrics["per_class"]) == list(data.class_names)
    assert sum(int(row["support"]) for row in per_class) == metrics["num_test"]
    correct = sum(int(row["correct"]) for row in per_class)
    assert correct == pytest.approx(metrics["top1"] * metrics["num_test"])
    predictions = read_csv(tmp_path / "predictions.csv")
    assert [row["sample_id"] for row in predictions] == list(data.test.ids)
    assert sum(row["actual"] == row["predicted"] for row in predictions) == correct
    for name in ("confusion.png", "embedding.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC

    if protocol in ("semi1", "semi10"):
        fraction = TEST_PROFILE[protocol]["fraction"]
        subset = class_balanced_subset(data.train.ids, data.train.labels.tolist(), fraction, 0)
        assert metrics["num_train"] == len(subset) < len(data.train.ids)
        assert metrics["label_fraction"] == fraction
        assert metrics["config"]["epochs"] == TEST_PROFILE[protocol]["epochs"]
    else:
        assert metrics["num_train"] == len(data.train.ids)


def test_raw_joints_knn_is_the_library_anchor(ucla, tmp_path):
    metrics = evaluate(ucla, "knn", "raw", tmp_path)
    data = load_eval_data(ucla["split"], ucla["data"])
    expected = raw_joints_knn(
        data.train.joints, data.train.labels, data.test.joints, data.test.labels,
        get_layout("ucla20"), num_classes=10, ks=(1, 20),
    )  # fmt: skip
    assert metrics["knn"] == {"k1": expected[1], "k20": expected[20]}
    assert metrics["top1"] == expected[1]["top1"] > 0.25  # chance is 0.1


def test_results_are_deterministic(ucla, tmp_path):
    a = evaluate(ucla, "semi10", "supervised", tmp_path / "a")
    b = evaluate(ucla, "semi10", "supervised", tmp_path / "b")
    assert a.pop("wall_time_s") and b.pop("wall_time_s")
    assert a == b
    assert (tmp_path / "a/predictions.csv").read_text() == (tmp_path / "b/predictions.csv").read_text()


def test_random_anchor_is_the_pretrain_config_seeded(ucla, tmp_path):
    """`random` = the SLiM config of the params' pretrain profile (here tiny), initialised with the
    evaluate seed: the same as an encoder file built so, and not the (differently seeded) tiny one."""
    same = save_tiny(tmp_path / "seed0.pt", "slim", "ucla20", seed=0)
    random = evaluate(ucla, "knn", "random", tmp_path / "random")
    assert random["encoder"] == "random:slim" and random["encoder_source"] == "random"
    rebuilt = evaluate(ucla, "knn", str(same), tmp_path / "rebuilt")
    other = evaluate(ucla, "knn", "slim", tmp_path / "other")
    assert random["knn"] == rebuilt["knn"] and random["per_class"] == rebuilt["per_class"]
    assert (random["knn"], random["per_class"]) != (other["knn"], other["per_class"])


def test_layout_mismatch_is_a_clear_error(ucla, tmp_path):
    with pytest.raises(ValueError, match=r"layout 'ntu25' but the data has layout 'ucla20'"):
        evaluate(ucla, "linear", "ntu", tmp_path)
    assert not tmp_path.joinpath("metrics.json").exists()


@pytest.mark.parametrize(
    ("protocol", "encoder", "message"),
    [
        ("linaer", "raw", r"unknown protocol 'linaer'; known: linear, knn, semi1, semi10, finetune"),
        ("finetune", "raw", r"'raw' is a frozen-feature anchor"),
        ("semi10", "random", r"fine-tuning from random init is `supervised:<method>`"),
        ("linear", "supervised:mae", r"trained from scratch: it goes with semi1, semi10, finetune"),
        ("knn", "random:vit", r"unknown method 'vit'; known: mae, slim"),
        ("knn", "models/nope/encoder.pt", r"no such file; give a pretrained encoder.pt, `raw`"),
    ],
)
def test_bad_requests_are_clear_errors(ucla, tmp_path, protocol, encoder, message):
    with pytest.raises(ValueError, match=message):
        evaluate(ucla, protocol, encoder, tmp_path)


def test_missing_split_ids_are_a_clear_error(ucla, tmp_path):
    doc = json.loads(ucla["split"].read_text())
    doc["test"].append("a99_s99_e99_v99")
    (tmp_path / "split.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"1 ids of .*split.json are not in the dataset.*a99_s99_e99_v99"):
        run("knn", "raw", tmp_path / "split.json", ucla["data"], tmp_path / "out", params_path=ucla["params"])


def cli_args(ucla, protocol: str, encoder: str, out: Path) -> list[str]:
    return [
        "evaluate", "--protocol", protocol, "--encoder", encoder, "--split", str(ucla["split"]),
        "--data", str(ucla["data"]), "--out", str(out), "--params", str(ucla["params"]), "--no-progress",
    ]  # fmt: skip


def test_cli_evaluates_and_prints_metrics(ucla, tmp_path):
    result = runner.invoke(app, cli_args(ucla, "knn", "raw", tmp_path))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["top1"] == json.loads((tmp_path / "metrics.json").read_text())["top1"]
    assert "per_class" not in printed  # in the file, too long for the terminal


@pytest.mark.parametrize(
    ("protocol", "encoder", "code", "message"),
    [
        ("knn5", "raw", 2, "Invalid value for '--protocol'"),
        ("linear", "ntu", 1, "error: "),
        ("finetune", "raw", 1, "frozen-feature anchor"),
    ],
)
def test_cli_errors_are_clear(ucla, tmp_path, protocol, encoder, code, message):
    encoder = str(ucla[encoder]) if encoder == "ntu" else encoder
    result = runner.invoke(app, cli_args(ucla, protocol, encoder, tmp_path))
    assert result.exit_code == code
    assert message in result.output
    assert not (tmp_path / "metrics.json").exists()


def test_repo_params_have_a_valid_evaluate_section():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.evaluate.profile in params.evaluate.profiles
    assert {"demo", "full"} <= set(params.evaluate.profiles)
    assert params.evaluate.dag.frozen and set(params.evaluate.dag.finetuned_methods) <= set(
        params.evaluate.dag.methods
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"linear": {"epoch": 3}}, r"evaluate.linear: unknown key\(s\) \['epoch'\]"),
        ({"finetune": {"seed": 3}}, r"set `seed` once, at the profile level"),
        ({"semi10": {"fraction": 1.5, "epochs": 2}}, r"less than 1"),
        ({"knn_ks": [0, 20]}, r"knn_ks must be positive"),
    ],
)
def test_bad_evaluate_params_are_clear_errors(tmp_path, change, message):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["evaluate"]["profiles"]["demo"].update(change)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=message):
        load_params(tmp_path / "params.yaml")


def test_dag_protocols_must_suit_their_stage(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["evaluate"]["dag"]["frozen"] = ["linear", "finetune"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"dag.frozen.1\n  Input should be 'linear' or 'knn'"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.slow
@pytest.mark.xdist_group("built_project")
def test_dvc_repro_runs_every_evaluation_of_the_dag(built_project):
    """The session's project, built by a real `dvc repro` of the whole DAG (tests/project.py): every
    evaluation of params.yaml's evaluate.dag is a DVC metric, and a second `dvc repro` does nothing."""
    env = project_env(built_project)
    proc = subprocess.run(
        ["dvc", "metrics", "show", "--json"], cwd=built_project, env=env, capture_output=True, text=True
    )
    shown = json.loads(proc.stdout)
    dag = yaml.safe_load((built_project / "params.yaml").read_text())["evaluate"]["dag"]
    expected = {
        f"reports/{p}/{m}/metrics.json" for p in dag["frozen"] for m in [*dag["methods"], *dag["anchors"]]
    } | {
        f"reports/{p}/{m}/metrics.json"
        for p in dag["finetuned"]
        for m in [*dag["finetuned_methods"], "supervised"]
    }
    metrics = next(iter(shown.values()))["data"]
    assert expected <= set(metrics)
    assert all(0 <= metrics[path]["data"]["top1"] <= 1 for path in expected)
    status = subprocess.run(["dvc", "status"], cwd=built_project, env=env, capture_output=True, text=True)
    assert status.stdout.strip() == "Data and pipelines are up to date.", status.stdout
