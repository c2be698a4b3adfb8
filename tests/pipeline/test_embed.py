"""`slim embed` on real NW-UCLA clips: from `models:/...@champion` (a real SQLite MLflow store) it
gives the checkpoint's embeddings, which are the evaluation's frozen features; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline import registry
from pipeline.cli import app
from pipeline.embed import read_embeddings
from pipeline.embed import run as embed
from pipeline.features import run as write_features
from slim.evaluation import load_features
from tests.pipeline.test_registry import (  # noqa: F401
    one_torch_thread,
    register_with,
    save_tiny,
    shared_store,
    write_params,
)

runner = CliRunner()
NAME = "embed-encoder"


@pytest.fixture(scope="module")
def champion(mlflow_store, ucla_subset, tmp_path_factory) -> dict:
    """The shared tiny real encoder registered as `embed-encoder` and promoted to champion."""
    shared = shared_store(mlflow_store, tmp_path_factory, ucla_subset["data"])
    root = tmp_path_factory.mktemp("embed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", shared["store"])
        version = register_with(shared["uri"], NAME, root / "reports", {"linear": 0.5, "knn": 0.4})
        registry.promote(NAME, version)
    return {"root": root, "store": shared["store"], "encoder": shared["encoder"], "version": version, **ucla_subset}


@pytest.fixture
def store(champion, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["store"])
    return champion


def test_embedding_from_champion_equals_checkpoint_and_evaluation_features(store, tmp_path):
    from_registry = embed(f"models:/{NAME}@champion", store["data"], tmp_path / "reg.parquet", batch_size=7,
                          chunk_size=50, progress=False)  # fmt: skip
    from_file = embed(str(store["encoder"]), store["data"], tmp_path / "file.parquet", progress=False)
    ids, reg, meta = read_embeddings(tmp_path / "reg.parquet")
    file_ids, file_emb, _ = read_embeddings(tmp_path / "file.parquet")
    rows = pq.read_table(store["data"], columns=["sample_id"]).num_rows
    assert from_registry["rows"] == from_file["rows"] == rows == len(ids) and ids == file_ids
    assert reg.dtype == np.float32 and reg.shape == (rows, 2 * 2 * 32)  # 2 persons x [CLS, mean patch]
    np.testing.assert_allclose(reg, file_emb, atol=1e-5)
    assert meta["slim.embed.version"] == str(store["version"]) and meta["slim.embed.layout"] == "ucla20"
    # the registered model carries the clip preparation: served clips are view-normalised as evaluated ones
    assert meta["slim.embed.normalise_view"] == "true"
    assert meta["slim.embed.resolved"] == f"models:/{NAME}/{store['version']}"

    # the same numbers as the evaluation's frozen features (features@ stage) for the split's samples
    params = write_params(tmp_path / "params.yaml")
    write_features(str(store["encoder"]), store["split"], store["data"], tmp_path / "f.npz", params_path=params)
    features = load_features(tmp_path / "f.npz")
    index = {sample_id: i for i, sample_id in enumerate(ids)}
    for side_ids, side in ((features.train_ids, features.train), (features.test_ids, features.test)):
        np.testing.assert_allclose(reg[[index[i] for i in side_ids]], side.numpy(), atol=1e-5)
    labels = pq.read_table(tmp_path / "reg.parquet", columns=["label"]).column("label").to_pylist()
    assert labels == pq.read_table(store["data"], columns=["label"]).column("label").to_pylist()


def test_cli_embed(store, tmp_path):
    out = tmp_path / "e.parquet"
    result = runner.invoke(app, [
        "embed", "--model", f"models:/{NAME}@champion", "--input", str(store["data"]), "--output", str(out),
        "--batch-size", "16", "--no-progress",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["version"] == store["version"] and summary["rows"] == pq.read_metadata(out).num_rows
    assert pq.read_schema(out).names == ["sample_id", "label", "embedding"]


def test_clear_errors(store, tmp_path):
    data = store["data"]
    with pytest.raises(ValueError, match="no such file; give a registry URI"):
        embed(str(tmp_path / "nope.pt"), data, tmp_path / "o.parquet", progress=False)
    with pytest.raises(registry.RegistryError, match="has no alias 'gold'"):
        embed(f"models:/{NAME}@gold", data, tmp_path / "o.parquet", progress=False)
    ntu = save_tiny(tmp_path / "ntu.pt", layout="ntu25")
    with pytest.raises(ValueError, match="layout 'ucla20', but the encoder's is 'ntu25'"):
        embed(str(ntu), data, tmp_path / "o.parquet", progress=False)
    assert not (tmp_path / "o.parquet").exists() and not list(tmp_path.glob(".o.parquet*"))
    result = runner.invoke(app, ["embed", "--model", "models:/nothing@champion", "--input", str(data),
                                 "--output", str(tmp_path / "o.parquet")])  # fmt: skip
    assert result.exit_code == 1 and "registered model 'nothing' does not exist" in result.output
