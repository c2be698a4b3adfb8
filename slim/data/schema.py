"""The Parquet dataset of sequences: schema, atomic write, and reading back to `SkeletonSequence`.

One row per sequence. `joints` is the (frames, bodies, joints, 3) float32 array flattened in that
order (NaN where a body is absent); `tracking_state` the (frames, bodies, joints) uint8 array, null
for formats without it. `source_path` (relative to the ingested folder) and `source_sha256` name the
file a row came from. The file's key-value metadata holds `slim.schema_version` and
`slim.source_sha256`, the sha256 of the sorted per-file hashes (one per line) of the ingested files.
Plain Parquet: pyarrow, duckdb and polars read it with no custom code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.atomic import atomic_path
from slim.data.sequence import SkeletonSequence

SCHEMA_VERSION = "1"
META_SCHEMA_VERSION = "slim.schema_version"
META_SOURCE_SHA256 = "slim.source_sha256"
ROW_GROUP_SIZE = 1024

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("layout", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("subject", pa.int32()),
        pa.field("view", pa.int32()),
        pa.field("setup", pa.int32()),
        pa.field("replication", pa.int32()),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("num_bodies", pa.int32(), nullable=False),
        pa.field("num_joints", pa.int32(), nullable=False),
        pa.field("joints", pa.list_(pa.float32()), nullable=False),
        pa.field("tracking_state", pa.list_(pa.uint8())),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string(), nullable=False),
    ]
)
_SCALARS = ("sample_id", "dataset", "layout", "label", "action", "subject", "view", "setup", "replication")


def sources_sha256(file_hashes: Iterable[str]) -> str:
    """One hash for a set of source files: sha256 over their sorted hex digests, one per line."""
    return hashlib.sha256("".join(f"{h}\n" for h in sorted(file_hashes)).encode()).hexdigest()


def sequences_to_table(
    sequences: Sequence[SkeletonSequence], source_paths: Sequence[str], source_sha256: Sequence[str]
) -> pa.Table:
    """A table in SCHEMA, rows in the given order, in record batches of ROW_GROUP_SIZE rows."""
    batches = [
        _batch(
            sequences[k : k + ROW_GROUP_SIZE],
            source_paths[k : k + ROW_GROUP_SIZE],
            source_sha256[k : k + ROW_GROUP_SIZE],
        )
        for k in range(0, len(sequences), ROW_GROUP_SIZE)
    ]
    return pa.Table.from_batches(batches, schema=SCHEMA)


def _batch(
    sequences: Sequence[SkeletonSequence], paths: Sequence[str], hashes: Sequence[str]
) -> pa.RecordBatch:
    columns = {name: [getattr(s, name) for s in sequences] for name in _SCALARS}
    columns |= {
        "num_frames": [s.num_frames for s in sequences],
        "num_bodies": [s.num_bodies for s in sequences],
        "num_joints": [s.num_joints for s in sequences],
    }
    arrays = [pa.array(columns[f.name], type=f.type) for f in SCHEMA if f.name in columns]
    arrays.append(_list_array([s.joints for s in sequences], np.float32))
    arrays.append(_list_array([s.tracking_state for s in sequences], np.uint8))
    arrays += [pa.array(list(paths), pa.string()), pa.array(list(hashes), pa.string())]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _list_array(arrays: Sequence[np.ndarray | None], dtype: type) -> pa.ListArray:
    """One list per array (flattened, C order); None becomes a null list."""
    sizes = np.array([0 if a is None else a.size for a in arrays], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]), pa.int32())
    present = [np.ascontiguousarray(a, dtype=dtype).ravel() for a in arrays if a is not None]
    values = pa.array(np.concatenate(present) if present else np.empty(0, dtype))
    mask = pa.array([a is None for a in arrays]) if any(a is None for a in arrays) else None
    return pa.ListArray.from_arrays(offsets, values, mask=mask)


def write_dataset(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `table` to `path` atomically, with the schema version and `metadata` in the file's key-value metadata."""
    meta = {META_SCHEMA_VERSION: SCHEMA_VERSION, **(metadata or {})}
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in meta.items()}}
    )
    # dictionaries only where values repeat, statistics only on scalars: trying a dictionary on the
    # joint values and computing their min/max made writing ~2.5x slower, for nothing
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=ROW_GROUP_SIZE,
            compression="zstd",
            use_dictionary=["dataset", "layout", "action"],
            write_statistics=[f.name for f in SCHEMA if not pa.types.is_list(f.type)],
        )


def read_metadata(path: Path) -> dict[str, str]:
    """The dataset's key-value metadata (schema version, source hash, ...), without reading data."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"slim.")}


def read_table(path: Path, columns: Sequence[str] | None = None, filters=None) -> pa.Table:
    """Read the dataset (optionally some columns, or rows matching pyarrow `filters`); check its schema version."""
    _check_version(path)
    return pq.read_table(path, columns=list(columns) if columns is not None else None, filters=filters)


def read_sequences(path: Path, sample_ids: Iterable[str] | None = None) -> list[SkeletonSequence]:
    """All sequences of the dataset in stored (sample id) order, or only those in `sample_ids`."""
    filters = None if sample_ids is None else [("sample_id", "in", list(sample_ids))]
    return table_to_sequences(read_table(path, filters=filters))


def iter_sequences(path: Path, batch_size: int = 256) -> Iterator[SkeletonSequence]:
    """Stream the sequences of a dataset too large for memory, batch by batch."""
    _check_version(path)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        yield from table_to_sequences(pa.Table.from_batches([batch]))


def table_to_sequences(table: pa.Table) -> list[SkeletonSequence]:
    """Rows of a table in SCHEMA back to sequences; the arrays are writable copies."""
    sequences = []
    for batch in table.to_batches():
        scalars = {
            name: batch.column(name).to_pylist()
            for name in (*_SCALARS, "num_frames", "num_bodies", "num_joints")
        }
        joints, states = _rows(batch.column("joints")), _rows(batch.column("tracking_state"))
        for i in range(batch.num_rows):
            shape = (scalars["num_frames"][i], scalars["num_bodies"][i], scalars["num_joints"][i])
            sequences.append(
                SkeletonSequence(
                    **{name: scalars[name][i] for name in _SCALARS},
                    joints=joints[i].reshape(*shape, 3),
                    tracking_state=None if states[i] is None else states[i].reshape(shape),
                )
            )
    return sequences


def _rows(column: pa.ListArray) -> list[np.ndarray | None]:
    """Each list of a list column as its own numpy array (None for a null list)."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    return [None if nulls[i] else values[offsets[i] : offsets[i + 1]].copy() for i in range(len(column))]


def _check_version(path: Path) -> None:
    version = read_metadata(path).get(META_SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema version {version!r}, this code reads version {SCHEMA_VERSION!r}")
