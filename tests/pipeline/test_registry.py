"""The register stage against a real MLflow: the embedded SQLite store and a real `mlflow server`.

A tiny real SLiM encoder, real metrics from `slim evaluate` on the real NW-UCLA subset, an input
example of real clips; the registered version carries every tag, alias `challenger`, and loads
back (pt2) giving the checkpoint's features for any batch size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline import registry, tracking
from pipeline.cli import app
from pipeline.evaluate import run as evaluate
from pipeline.paths import REPO_ROOT
from pipeline.register import collect_metrics, real_clips
from pipeline.register import run as register
from slim.export import load_encoder, save_encoder
from slim.flops import count_params
from slim.models import build

TINY = {"dim": 32, "depth": 1, "heads": 2}
EVAL_PROFILE = {
    "seed": 0,
    "threads": 1,
    "batch_size": 64,
    "knn_ks": [1, 20],
    "linear": {"epochs": 20, "lr": 1.0e-2},
    "finetune": {"epochs": 1, "batch_size": 16},
    "semi1": {"fraction": 0.01, "epochs": 1},
    "semi10": {"fraction": 0.1, "epochs": 1},
}
runner = CliRunner()


# ----------------------------------------------------------------------------- helpers (shared)


def save_tiny(path: Path, seed: int = 1, layout: str = "ucla20") -> Path:
    torch.manual_seed(seed)
    return save_encoder(path, "slim", layout, build("slim", layout, **TINY))


def write_params(path: Path, **registry_settings) -> Path:
    """The repo's params with a quick `test` evaluate profile, a DAG of linear + knn for slim, and
    `registry` overrides."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["evaluate"]["profiles"]["test"] = EVAL_PROFILE
    params["evaluate"]["profile"] = "test"
    params["evaluate"]["dag"] = {"methods": ["slim"], "frozen": ["linear", "knn"], "finetuned": [], "finetuned_methods": []}
    params["registry"] = {**params.get("registry", {}), **registry_settings}
    path.write_text(yaml.safe_dump(params))
    return path


def write_metrics(reports: Path, top1: dict[str, float], layout: str = "ucla20") -> Path:
    """Hand-written reports/<protocol>/slim/metrics.json (the gate compares numbers)."""
    for protocol, value in top1.items():
        doc = {"protocol": protocol, "encoder": "slim", "layout": layout, "top1": value, "top5": min(1.0, value + 0.3)}
        out = reports / protocol / "slim" / "metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc))
    return reports


def log_tiny(encoder_path: Path, data: Path) -> str:
    """Log a tiny encoder (real-clip example) in a stage run; its `models:/m-...` URI."""
    encoder = load_encoder(encoder_path)
    with tracking.stage_run("register", dataset="nw-ucla") as run:
        assert run is not None
        return registry.log_encoder(encoder, real_clips(data, "ucla20", encoder.num_frames, 2, encoder.normalise_view), layout="ucla20").model_uri


def register_with(model_uri: str, name: str, reports: Path, top1: dict[str, float]) -> int:
    """A version of `name` whose metric tags come from metrics.json files with these top-1s."""
    metrics = collect_metrics(write_metrics(reports, top1), list(top1), "slim", "ucla20")
    return registry.register_version(model_uri, name, {f"metric.{k}": v for k, v in metrics.items()})


_SHARED: dict = {}


def shared_store(store: str, tmp_path_factory, data: Path) -> dict:
    """The session's SQLite store (conftest's `mlflow_store`; creating a store's tables takes seconds)
    with one logged tiny encoder (logging takes seconds too): each test registers it under a model
    name of its own. Keys: store, uri (the logged model), encoder (its file)."""
    if not _SHARED:
        root = tmp_path_factory.mktemp("registry-shared")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", store)
            encoder = save_tiny(root / "encoder.pt")
            _SHARED.update(store=store, encoder=encoder, uri=log_tiny(encoder, data))
    return _SHARED


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as the register stage times with (on a busy 2-core machine two threads ran
    25x slower than one); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def evaluated(ucla_subset, tmp_path_factory) -> dict[str, Path]:
    """A tiny real encoder and the raw/random anchors evaluated (linear, knn) on the real subset by
    `slim evaluate`, as the DAG does before `register` (which reads the anchors for the floor)."""
    root = tmp_path_factory.mktemp("registry")
    params = write_params(root / "params.yaml")
    encoder = save_tiny(root / "encoder.pt")
    for protocol in ("linear", "knn"):
        for spec, name in ((str(encoder), "slim"), ("random", "random"), ("raw", "raw")):
            evaluate(protocol, spec, ucla_subset["split"], ucla_subset["data"], root / "reports" / protocol / name,
                     params_path=params)  # fmt: skip
    return {"root": root, "params": params, "encoder": encoder, **ucla_subset}


# ----------------------------------------------------------------------------- tests


def test_register_stage_tags_alias_and_loads_back(evaluated, tmp_path, monkeypatch):
    # a store of its own: the session store's parent run of this process may carry other tests' failures
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = "register-stage"
    params = write_params(tmp_path / "params.yaml", model_name=name)
    out = tmp_path / "registry" / f"{name}.json"
    result = runner.invoke(app, [
        "register", "--encoder", str(evaluated["encoder"]), "--data", str(evaluated["data"]),
        "--reports", str(evaluated["root"] / "reports"), "--out", str(out), "--params", str(params),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["name"] == name and doc["version"] == 1 and doc["model_uri"] == f"models:/{name}/1"

    client = registry.connect()
    version = registry.get_version(name, "challenger", client)
    assert int(version.version) == 1 and version.run_id == doc["run_id"]
    tags = version.tags
    encoder = load_encoder(evaluated["encoder"])
    for protocol in ("linear", "knn"):
        written = json.loads((evaluated["root"] / "reports" / protocol / "slim" / "metrics.json").read_text())
        assert float(tags[f"metric.{protocol}.top1"]) == pytest.approx(written["top1"])
    assert float(tags["metric.knn.k20.top1"]) == pytest.approx(written["knn"]["k20"]["top1"])
    assert float(tags["inference.gflops_per_clip"]) > 0 and float(tags["inference.clips_per_s"]) > 0
    assert int(tags["params"]) == count_params(encoder) and tags["layout"] == "ucla20"
    assert tags["dvc.data_hash"] == tracking.data_hash(evaluated["data"])
    assert tags["slim.params_hash"] == tracking.params_hash(evaluated["params"])
    assert len(tags["git.commit"]) in (40, 7) or tags["git.commit"] == "unknown"
    assert tags["source.encoder_sha256"] == registry.sha256_file(evaluated["encoder"])
    assert tags["source.encoder_md5"] == tracking.data_hash(evaluated["encoder"])

    # the stage ran as a child run of the pipeline run, which the register stage closed
    run = client.get_run(doc["run_id"])
    assert run.data.tags["slim.stage"] == "register" and run.info.status == "FINISHED"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"

    # the input example is real clips, batch >= 2; the pt2 model takes any batch size
    loaded = registry.load_model(f"models:/{name}@challenger")
    clips = real_clips(evaluated["data"], "ucla20", encoder.num_frames, 37, encoder.normalise_view)
    for batch in (1, 2, 37):
        with torch.no_grad():
            torch.testing.assert_close(loaded(clips[:batch]), encoder(clips[:batch]), atol=1e-5, rtol=1e-4)
    example = registry.load_input_example(f"models:/{name}/1")
    assert example.shape[0] >= 2 and torch.equal(torch.from_numpy(example), clips[: example.shape[0]])


def test_register_refuses_missing_metrics_and_disabled_tracking(evaluated, tmp_path, monkeypatch):
    args = (evaluated["encoder"], evaluated["data"])
    with pytest.raises(ValueError, match=r"semi10/slim/metrics.json does not exist"):
        params = write_params(tmp_path / "p.yaml")
        doc = yaml.safe_load(params.read_text())
        doc["evaluate"]["dag"].update(finetuned=["semi10"], finetuned_methods=["slim"])
        params.write_text(yaml.safe_dump(doc))
        register(*args, evaluated["root"] / "reports", tmp_path / "o.json", params_path=params)
    monkeypatch.setenv("SLIM_TRACKING", "off")
    with pytest.raises(registry.RegistryError, match="tracking is disabled"):
        register(*args, evaluated["root"] / "reports", tmp_path / "o.json", params_path=evaluated["params"])
    assert not (tmp_path / "o.json").exists()


@pytest.mark.slow  # starting the server: 15-45 s on 2 shared cores
def test_register_promote_load_through_a_server(evaluated, mlflow_server, tmp_path, monkeypatch):
    """Through a real `mlflow server` (aliases come back as strings there): register, first
    champion, a second version promoted by the gate, rollback, and loading @champion."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv(registry.LOCK_ENV, str(tmp_path / "promote.lock"))
    name = "slim-encoder-server"
    params = write_params(tmp_path / "params.yaml", model_name=name)
    doc = register(evaluated["encoder"], evaluated["data"], evaluated["root"] / "reports", tmp_path / "r.json",
                   params_path=params)  # fmt: skip
    client = registry.connect()
    assert isinstance(client.get_registered_model(name).aliases["challenger"], str)
    first = registry.promote(name, "challenger")
    assert (first.decision, first.champion) == ("first", doc["version"])

    top1 = {k.removeprefix("metric.").removesuffix(".top1"): float(v) + 0.05
            for k, v in registry.get_version(name, 1).tags.items() if k.startswith("metric.") and k.count(".") == 2
            and k.endswith(".top1")}  # fmt: skip
    better = register_with(doc["logged_model_uri"], name, tmp_path / "reports", top1)
    decision = registry.promote(name, "challenger", registry.GateRules("linear.top1", 0.01, 0.02))
    assert (decision.decision, decision.champion, decision.previous_champion) == ("promoted", better, 1)
    assert registry.aliases(name) == {"champion": better, "challenger": better}

    back = registry.rollback(name)
    assert (back.decision, back.champion) == ("rolled_back", 1)
    assert registry.champion_stack(name) == [1]
    assert registry.get_version(name, better).tags["promotion.decision"] == "rolled_back"

    loaded = registry.load_model(f"models:/{name}@champion")
    assert loaded.source["version"] == 1
    encoder = load_encoder(evaluated["encoder"])
    clips = real_clips(evaluated["data"], "ucla20", encoder.num_frames, 3, encoder.normalise_view)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clips), encoder(clips), atol=1e-5, rtol=1e-4)
