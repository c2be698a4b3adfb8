"""DVC stage `split@<protocol>`: train/test sample ids of an ingested dataset, as JSON.

Tracked as MLflow run `split@<protocol>` (lineage tags with the Parquet's hash; train/test counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from pipeline import tracking
from slim.atomic import atomic_write_text
from slim.data.splits import SampleMeta, get_protocol, split_samples

META_COLUMNS = ["sample_id", "label", "subject", "view", "setup"]


def read_sample_meta(parquet_path: Path) -> list[SampleMeta]:
    table = pq.read_table(parquet_path, columns=META_COLUMNS)
    return [SampleMeta(**row) for row in table.to_pylist()]


def read_split(split_path: Path) -> dict:
    """A split file written by `run`: {"protocol", "dataset", "train", "test"}, id lists sorted.

    Raises ValueError naming the file when it is not one, or when either list is empty.
    """
    try:
        split = json.loads(Path(split_path).read_text())
        ids = {part: sorted(split[part]) for part in ("train", "test")}
        dataset = str(split["dataset"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{split_path}: not a split file (`slim split`) with `dataset` and `train`/`test` lists ({exc})"
        ) from exc
    if not ids["train"] or not ids["test"]:
        raise ValueError(f"{split_path}: the train or the test list is empty")
    return {"protocol": split.get("protocol", Path(split_path).stem), "dataset": dataset, **ids}


def run(protocol_name: str, parquet_path: Path, out_path: Path) -> dict:
    """Write `{"protocol", "dataset", "train": [...], "test": [...]}` to `out_path`; return counts."""
    protocol = get_protocol(protocol_name)
    params = {"protocol": protocol.name, "data": str(parquet_path)}
    with tracking.stage_run(
        f"split@{protocol.name}", dataset=protocol.dataset, params=params, data_path=parquet_path
    ):
        split = split_samples(protocol, read_sample_meta(parquet_path))
        doc = {
            "protocol": protocol.name,
            "dataset": protocol.dataset,
            "description": protocol.description,
            **split,
        }
        atomic_write_text(out_path, json.dumps(doc, indent=1) + "\n")
        counts = {"protocol": protocol.name, "train": len(split["train"]), "test": len(split["test"])}
        tracking.log_metrics({"train": counts["train"], "test": counts["test"]})
    return counts
