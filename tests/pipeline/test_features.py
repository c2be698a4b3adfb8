"""Frozen features computed once (`slim features`) and read by the frozen protocols: the same
scores as encoding on the fly, and clear errors for files that do not belong to the split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.evaluate import run as evaluate
from pipeline.features import run as write_features
from slim.evaluation import SplitFeatures, load_features, save_features
from tests.pipeline.test_evaluate import ucla  # noqa: F401  (module fixture: real subset, tiny encoders)


@pytest.mark.parametrize("encoder", ["slim", "raw", "random"])
def test_features_file_scores_like_encoding_on_the_fly(ucla, tmp_path, encoder):  # noqa: F811
    source = str(ucla[encoder]) if encoder == "slim" else encoder
    summary = write_features(
        source, ucla["split"], ucla["data"], tmp_path / "f.npz", params_path=ucla["params"]
    )
    features = load_features(tmp_path / "f.npz")
    split = json.loads(ucla["split"].read_text())
    assert features.train_ids == tuple(sorted(split["train"])) and features.test_ids == tuple(
        sorted(split["test"])
    )
    assert summary["num_train"] == len(split["train"]) and summary["dim"] == features.train.shape[1]
    for protocol in ("linear", "knn"):
        direct = evaluate(
            protocol,
            source,
            ucla["split"],
            ucla["data"],
            tmp_path / protocol / "direct",
            params_path=ucla["params"],
        )
        cached = evaluate(
            protocol, None, ucla["split"], ucla["data"], tmp_path / protocol / "cached",
            features=tmp_path / "f.npz", params_path=ucla["params"],
        )  # fmt: skip
        assert cached["encoder"] == direct["encoder"]
        assert (cached["top1"], cached["top5"], cached["per_class"]) == (
            direct["top1"],
            direct["top5"],
            direct["per_class"],
        )
        assert cached["encoder_source"] == str(tmp_path / "f.npz")


def test_features_of_another_split_are_refused(ucla, tmp_path):  # noqa: F811
    write_features("raw", ucla["split"], ucla["data"], tmp_path / "f.npz", params_path=ucla["params"])
    split = json.loads(ucla["split"].read_text())
    split["test"] = split["test"][:-1]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(split))
    with pytest.raises(ValueError, match=r"f\.npz: its test samples are not those of split"):
        evaluate(
            "knn",
            None,
            other,
            ucla["data"],
            tmp_path / "out",
            features=tmp_path / "f.npz",
            params_path=ucla["params"],
        )


@pytest.mark.parametrize(
    ("protocol", "encoder", "features", "message"),
    [
        ("semi10", None, "f.npz", "fine-tunes the encoder: give --encoder"),
        ("knn", "raw", "f.npz", "not both or neither"),
        ("knn", None, None, "not both or neither"),
    ],
)
def test_bad_evaluate_arguments_are_clear_errors(ucla, tmp_path, protocol, encoder, features, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        evaluate(
            protocol, encoder, ucla["split"], ucla["data"], tmp_path,
            features=None if features is None else tmp_path / features, params_path=ucla["params"],
        )  # fmt: skip


def test_supervised_has_no_frozen_features(ucla, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="no frozen features"):
        write_features(
            "supervised", ucla["split"], ucla["data"], tmp_path / "f.npz", params_path=ucla["params"]
        )


def test_round_trip_and_bad_files(tmp_path):
    features = SplitFeatures(
        "slim", "ucla-xview", "ucla20", ("a", "b"), torch.arange(6.0).reshape(2, 3), ("c",), torch.ones(1, 3)
    )
    save_features(features, tmp_path / "f.npz")
    back = load_features(tmp_path / "f.npz")
    assert (back.encoder, back.split, back.layout, back.train_ids, back.test_ids) == (
        "slim",
        "ucla-xview",
        "ucla20",
        ("a", "b"),
        ("c",),
    )
    assert torch.equal(back.train, features.train) and torch.equal(back.test, features.test)
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]

    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text\.npz: not a features file"):
        load_features(tmp_path / "text.npz")
    np.savez(tmp_path / "partial.npz", train=np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"partial\.npz: not a features file .*missing arrays"):
        load_features(tmp_path / "partial.npz")
    with pytest.raises(ValueError, match="2 ids but features of shape"):
        SplitFeatures("x", "s", "l", ("a", "b"), torch.zeros(3, 2), ("c",), torch.zeros(1, 2))
