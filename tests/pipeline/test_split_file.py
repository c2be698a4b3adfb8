"""`pipeline.split.read_split`: the one reader of split files, shared by pretrain and evaluate."""

from __future__ import annotations

import json

import pytest

from pipeline.split import read_split


def _write(tmp_path, doc) -> object:
    path = tmp_path / "ucla-xview.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_reads_sorted_ids_and_names_protocol_from_the_file(tmp_path):
    path = _write(tmp_path, {"dataset": "nw-ucla", "train": ["b", "a"], "test": ["d", "c"]})
    assert read_split(path) == {"protocol": "ucla-xview", "dataset": "nw-ucla", "train": ["a", "b"], "test": ["c", "d"]}


@pytest.mark.parametrize(
    "doc, says",
    [
        ("{not json", "not a split file"),
        ({"train": ["a"], "test": ["b"]}, "not a split file"),
        ({"dataset": "nw-ucla", "train": ["a"]}, "not a split file"),
        ({"dataset": "nw-ucla", "train": [], "test": ["b"]}, "list is empty"),
    ],
)
def test_bad_split_file_error_names_the_file(tmp_path, doc, says):
    path = _write(tmp_path, doc)
    with pytest.raises(ValueError, match=says) as info:
        read_split(path)
    assert str(path) in str(info.value)


def test_missing_split_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.json: not a split file"):
        read_split(tmp_path / "missing.json")
