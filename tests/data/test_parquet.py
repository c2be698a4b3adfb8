"""The Parquet dataset: full ingests of the real data, round trip, metadata, other readers, atomic writes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from slim.data import schema
from slim.data.ingest import (
    DATASET_FILE,
    MIN_FILES_FOR_POOL,
    QUARANTINE_FILE,
    SUMMARY_FILE,
    TooManyBadFilesError,
    ingest,
)
from slim.data.readers.ntu import read_ntu_file
from slim.data.readers.ucla import read_ucla_file


@pytest.fixture(scope="session")
def ucla_out(ucla_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ucla")
    return out, ingest("nw-ucla", ucla_dir, out, workers=2, progress=False)


@pytest.fixture(scope="session")
def ntu_out(ntu_raw_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ntu")
    return out, ingest("ntu", ntu_raw_dir, out, workers=1, progress=False)


def _same(a, b):
    assert (a.sample_id, a.dataset, a.layout, a.label, a.action) == (
        b.sample_id,
        b.dataset,
        b.layout,
        b.label,
        b.action,
    )
    assert (a.subject, a.view, a.setup, a.replication) == (b.subject, b.view, b.setup, b.replication)
    assert a.joints.dtype == b.joints.dtype == np.float32
    np.testing.assert_array_equal(a.joints, b.joints)  # NaN-aware
    if a.tracking_state is None:
        assert b.tracking_state is None
    else:
        np.testing.assert_array_equal(a.tracking_state, b.tracking_state)


def test_all_ucla_files_ingest(ucla_out, ucla_dir):
    out, summary = ucla_out
    table = schema.read_table(
        out / DATASET_FILE, columns=["sample_id", "label", "action", "num_frames", "tracking_state"]
    )
    assert summary["files"] == summary["sequences"] == table.num_rows == 1484
    assert summary["quarantined_files"] == 0 and (out / QUARANTINE_FILE).read_text() == ""
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))
    assert min(table.column("num_frames").to_pylist()) == 1  # the single-frame sequence is kept
    ids = table.column("sample_id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert table.column("tracking_state").null_count == 1484
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary


def test_ucla_round_trip(ucla_out, ucla_dir):
    out, _ = ucla_out
    files = sorted(ucla_dir.glob("*.json"))[::50]
    originals = [read_ucla_file(f) for f in files]
    for original, back in zip(
        originals, schema.read_sequences(out / DATASET_FILE, [s.sample_id for s in originals]), strict=True
    ):
        _same(original, back)


def test_ntu_round_trip_and_hashes(ntu_out, ntu_raw_dir):
    out, summary = ntu_out
    files = sorted(ntu_raw_dir.glob("*.skeleton"))
    back = list(schema.iter_sequences(out / DATASET_FILE, batch_size=4))
    assert len(back) == 9
    for path, seq in zip(files, back, strict=True):
        _same(read_ntu_file(path), seq)
    hashes = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    table = schema.read_table(out / DATASET_FILE, columns=["source_sha256", "source_path"])
    assert table.column("source_sha256").to_pylist() == hashes
    assert table.column("source_path").to_pylist() == [f.name for f in files]
    meta = schema.read_metadata(out / DATASET_FILE)
    assert meta[schema.META_SCHEMA_VERSION] == schema.SCHEMA_VERSION
    assert (
        meta[schema.META_SOURCE_SHA256] == summary["source_sha256"] == schema.sources_sha256(reversed(hashes))
    )
    assert pq.read_schema(out / DATASET_FILE).remove_metadata() == schema.SCHEMA.remove_metadata()


def test_duckdb_and_polars_read_it(ntu_out):
    duckdb = pytest.importorskip("duckdb")
    polars = pytest.importorskip("polars")
    path = str(ntu_out[0] / DATASET_FILE)
    rows = duckdb.sql(
        f"select sample_id, len(joints), num_frames * num_bodies * 75 from '{path}' order by 1"
    ).fetchall()
    assert len(rows) == 9 and all(n == m for _, n, m in rows)
    frame = polars.read_parquet(path)
    assert frame.height == 9 and frame["joints"].dtype == polars.List(polars.Float32)
    assert frame["tracking_state"].dtype == polars.List(polars.UInt8)


def test_parallel_and_serial_ingests_are_identical(ntu_raw_dir, tmp_path):
    src = tmp_path / "src"
    for k in (1, 2):  # enough files for the process pool, in two folders
        for path in ntu_raw_dir.glob("*.skeleton"):
            (src / f"copy{k}").mkdir(parents=True, exist_ok=True)
            (src / f"copy{k}" / f"{path.stem[:13]}{k + 4:03d}{path.stem[16:]}.skeleton").write_bytes(
                path.read_bytes()
            )
    assert len(list(src.rglob("*.skeleton"))) >= MIN_FILES_FOR_POOL
    serial = ingest("ntu", src, tmp_path / "serial", workers=1, progress=False)
    assert ingest("ntu", src, tmp_path / "pool", workers=2, progress=False) == serial
    assert pq.read_table(tmp_path / "pool" / DATASET_FILE).equals(
        pq.read_table(tmp_path / "serial" / DATASET_FILE)
    )


def _src_with_one_bad(ntu_raw_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ntu_raw_dir, src)
    (src / "S001C001P001R001A001.skeleton").chmod(0o644)
    (src / "S001C001P001R001A001.skeleton").write_bytes(b"garbage\n")
    return src


def test_too_many_bad_files_fails_after_writing_the_report(ntu_raw_dir, tmp_path):
    src, out = _src_with_one_bad(ntu_raw_dir, tmp_path), tmp_path / "out"
    out.mkdir()
    (out / DATASET_FILE).write_bytes(b"stale")
    with pytest.raises(
        TooManyBadFilesError, match=r"1 of 9 ntu files .* malformed \(11.1% > max_bad_fraction 10.0%\)"
    ):
        ingest("ntu", src, out, max_bad_fraction=0.1, workers=1, progress=False)
    (entry,) = [json.loads(line) for line in (out / QUARANTINE_FILE).read_text().splitlines()]
    assert entry["path"] == "S001C001P001R001A001.skeleton" and entry["line"] == 1
    assert json.loads((out / SUMMARY_FILE).read_text())["ok"] is False
    assert not (out / DATASET_FILE).exists()
    assert ingest("ntu", src, out, max_bad_fraction=0.12, workers=1, progress=False)["sequences"] == 8


def test_no_files_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no \\*.skeleton files under"):
        ingest("ntu", tmp_path, tmp_path / "out", progress=False)


def test_failed_write_keeps_the_old_dataset(ntu_out, ntu_raw_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(ntu_out[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(table, where, **kwargs):
        open(where, "wb").write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(schema.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        ingest(
            "ntu",
            _src_with_one_bad(ntu_raw_dir, tmp_path),
            out,
            max_bad_fraction=0.5,
            workers=1,
            progress=False,
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old outputs, nothing else


KILLED_WRITER = """
import os, sys
from pathlib import Path
from slim.data import schema
from slim.data.ingest import ingest

def killed(table, where, **kwargs):
    open(where, "wb").write(b"PAR1 partial")
    os._exit(9)

schema.pq.write_table = killed
ingest("ntu", Path(sys.argv[1]), Path(sys.argv[2]), workers=1, progress=False)
"""


def test_killed_ingest_leaves_nothing_that_looks_complete(ntu_raw_dir, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(ntu_raw_dir), str(out)], timeout=120)
    assert done.returncode == 9
    assert not (out / DATASET_FILE).exists() and not (out / SUMMARY_FILE).exists()
    assert not list(out.glob("*.parquet")) and not list(out.glob("sequences*"))
    assert all(
        p.name.startswith(".") and p.name.endswith(".tmp") for p in out.iterdir() if p.name != QUARANTINE_FILE
    )


def test_npz_ingest_round_trip(ntu_raw_dir, tmp_path):
    sequences = [read_ntu_file(p) for p in sorted(ntu_raw_dir.glob("*.skeleton"))]
    x = np.zeros((9, 300, 2, 25, 3), np.float32)
    for n, seq in enumerate(sequences):
        x[n, : seq.num_frames, : seq.num_bodies] = np.nan_to_num(seq.joints)
    y = np.eye(60, dtype=np.float32)[[s.label for s in sequences]]
    src = tmp_path / "src"
    src.mkdir()
    np.savez(
        src / "NTU60_CS.npz",
        x_train=x[:5].reshape(5, 300, 150),
        y_train=y[:5],
        x_test=x[5:].reshape(4, 300, 150),
        y_test=y[5:],
    )
    summary = ingest("npz", src, tmp_path / "out", workers=1, progress=False)
    assert summary["sequences"] == 9
    back = schema.read_sequences(tmp_path / "out" / DATASET_FILE)
    assert [s.sample_id for s in back][:2] == ["NTU60_CS-test-000000", "NTU60_CS-test-000001"]
    by_id = {s.sample_id: s for s in back}
    for n, seq in enumerate(sequences):
        got = by_id[f"NTU60_CS-{'train' if n < 5 else 'test'}-{n if n < 5 else n - 5:06d}"]
        np.testing.assert_array_equal(got.joints, seq.joints)
        assert got.tracking_state is None and got.subject is None and got.label == seq.label
