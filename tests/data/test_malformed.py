"""A corpus of malformed inputs, made from the real files by mutation.

Each case writes one bad file beside good real ones; ingestion must quarantine exactly that file with
a specific reason (and the line, for NTU text) and still ingest every good file. Variants the readers
accept (CRLF, LF, a UTF-8 BOM, trailing blank lines) must ingest with no quarantine at all.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slim.data.ingest import QUARANTINE_FILE, ingest
from slim.data.schema import read_table

NTU_ONE = "S001C001P001R001A001.skeleton"  # LF, one body
NTU_TWO = "S017C003P020R002A054.skeleton"  # LF, two bodies
NTU_CRLF = "S001C001P001R001A011.skeleton"
UCLA_FILES = ("a01_s01_e00_v01.json", "a04_s03_e04_v02.json", "a08_s07_e00_v03.json")


def _ntu_lines(real: Path, name: str = NTU_ONE) -> list[str]:
    return (real / name).read_text().split("\n")


def _edit_line(real, index, edit, name=NTU_ONE):
    lines = _ntu_lines(real, name)
    lines[index] = edit(lines[index])
    return "\n".join(lines).encode()


def _set_token(line: str, k: int, value: str) -> str:
    tokens = line.split()
    tokens[k] = value
    return " ".join(tokens)


# Line indices (0-based) in NTU_ONE: 0 frames, 1 bodies, 2 body info, 3 joints, 4..28 joint lines, 29 bodies of frame 1
NTU_CASES = {
    "empty-file": (NTU_ONE, lambda r: b"", None, "empty file"),
    "whitespace-only": (NTU_ONE, lambda r: b"\n \r\n\n", None, "empty file"),
    "truncated-in-joints": (
        NTU_ONE,
        lambda r: (r / NTU_ONE).read_bytes()[:100_000],
        None,
        "truncated: the file ends inside",
    ),
    "truncated-before-frame": (
        NTU_ONE,
        lambda r: "\n".join(_ntu_lines(r)[:29]).encode(),
        29,
        "truncated: the file ends before the body count",
    ),
    "frame-count-too-large": (NTU_ONE, lambda r: _edit_line(r, 0, lambda s: "104"), None, "truncated"),
    "frame-count-too-small": (
        NTU_ONE,
        lambda r: _edit_line(r, 0, lambda s: "102"),
        None,
        "extra data after the last of the 102 frames",
    ),
    "extra-trailing-data": (
        NTU_ONE,
        lambda r: (r / NTU_ONE).read_bytes() + b"1\n2 3\n",
        2886,
        "extra data after the last",
    ),
    "zero-frames": (NTU_ONE, lambda r: _edit_line(r, 0, lambda s: "0"), 1, "0 frames"),
    "negative-frame-count": (
        NTU_ONE,
        lambda r: _edit_line(r, 0, lambda s: "-3"),
        1,
        "negative frame count -3",
    ),
    "non-integer-frame-count": (
        NTU_ONE,
        lambda r: _edit_line(r, 0, lambda s: "10.5"),
        1,
        "expected the frame count",
    ),
    "negative-body-count": (
        NTU_ONE,
        lambda r: _edit_line(r, 1, lambda s: "-1"),
        2,
        "negative body count of frame 0",
    ),
    "body-count-too-large": (
        NTU_ONE,
        lambda r: _edit_line(r, 1, lambda s: "7"),
        2,
        "exceeds the Kinect maximum 6",
    ),
    "wrong-joint-count": (
        NTU_ONE,
        lambda r: _edit_line(r, 3, lambda s: "24"),
        4,
        "body has 24 joints, expected 25",
    ),
    "non-numeric-token": (
        NTU_ONE,
        lambda r: _edit_line(r, 10, lambda s: _set_token(s, 1, "abc")),
        11,
        "non-numeric value 'abc'",
    ),
    "nan-value": (
        NTU_ONE,
        lambda r: _edit_line(r, 12, lambda s: _set_token(s, 0, "nan")),
        13,
        "non-finite value 'nan'",
    ),
    "inf-value": (
        NTU_ONE,
        lambda r: _edit_line(r, 12, lambda s: _set_token(s, 2, "-inf")),
        13,
        "non-finite value '-inf'",
    ),
    "too-few-joint-values": (
        NTU_ONE,
        lambda r: _edit_line(r, 20, lambda s: s.rsplit(" ", 1)[0]),
        21,
        "joint line has 11 values, expected 12",
    ),
    "too-many-joint-values": (
        NTU_ONE,
        lambda r: _edit_line(r, 20, lambda s: s + " 1"),
        21,
        "joint line has 13 values, expected 12",
    ),
    "blank-joint-line": (NTU_ONE, lambda r: _edit_line(r, 40, lambda s: ""), 41, "joint line has 0 values"),
    "bad-tracking-state": (
        NTU_ONE,
        lambda r: _edit_line(r, 7, lambda s: _set_token(s, 11, "7")),
        8,
        "joint tracking state '7' is not 0, 1 or 2",
    ),
    "short-body-info": (
        NTU_ONE,
        lambda r: _edit_line(r, 2, lambda s: s.rsplit(" ", 1)[0]),
        3,
        "info line of body 0 of frame 0 has 9 values",
    ),
    "float-tracking-id": (
        NTU_ONE,
        lambda r: _edit_line(r, 2, lambda s: _set_token(s, 0, "7.2057594e16")),
        3,
        "is not an unsigned integer",
    ),
    "duplicate-tracking-id": (
        NTU_TWO,
        lambda r: _edit_line(r, 29, lambda s: _ntu_lines(r, NTU_TWO)[2], NTU_TWO),
        30,
        "twice in frame 0",
    ),
    "binary-junk": (
        NTU_ONE,
        lambda r: np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        1,
        "expected the frame count",
    ),
    "binary-in-joint-line": (
        NTU_ONE,
        lambda r: _edit_line(r, 15, lambda s: "\x00\x01\x02 garbage"),
        16,
        "joint line has 2 values",
    ),
    "utf16-encoded": (
        NTU_ONE,
        lambda r: (r / NTU_ONE).read_text().encode("utf-16"),
        1,
        "expected the frame count",
    ),
}


NTU_NAME_CASES = {
    "bad-file-name": (
        "foo.skeleton",
        lambda r: (r / NTU_ONE).read_bytes(),
        "does not match SsssCcccPpppRrrrAaaa",
    ),
    "action-zero": ("S001C001P001R001A000.skeleton", lambda r: (r / NTU_ONE).read_bytes(), "action A000"),
    "duplicate-sample-id": (
        f"sub/{NTU_ONE}",
        lambda r: (r / NTU_ONE).read_bytes(),
        f"duplicate sample id {NTU_ONE[:-9]}",
    ),
}


def _ucla(real: Path, name: str = UCLA_FILES[0]) -> dict:
    return json.loads((real / name).read_text())


def _ucla_edit(edit):
    def build(real):
        doc = _ucla(real)
        edit(doc)
        return json.dumps(doc).encode()

    return build


UCLA_CASES = {
    "json-truncated": (lambda r: (r / UCLA_FILES[0]).read_bytes()[:500], "not valid JSON"),
    "json-empty-file": (lambda r: b"", "not valid JSON"),
    "json-binary-junk": (lambda r: b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not valid JSON"),
    "json-not-an-object": (
        lambda r: json.dumps(_ucla(r)["skeletons"]).encode(),
        "top level is a JSON list, expected an object",
    ),
    "json-missing-skeletons": (_ucla_edit(lambda d: d.pop("skeletons")), "missing key(s) skeletons"),
    "json-missing-label": (_ucla_edit(lambda d: d.pop("label")), "missing key(s) label"),
    "json-label-out-of-range": (_ucla_edit(lambda d: d.update(label=11)), "label 11 out of range"),
    "json-label-zero": (_ucla_edit(lambda d: d.update(label=0)), "label 0 out of range"),
    "json-label-not-int": (_ucla_edit(lambda d: d.update(label="1")), "label '1' out of range"),
    "json-label-mismatch": (
        _ucla_edit(lambda d: d.update(label=2)),
        "label 2 is action a02 but file_name says a01",
    ),
    "json-bad-file-name": (
        _ucla_edit(lambda d: d.update(file_name="a01-s01-e00-v01")),
        "does not match aAA_sSS_eEE_vVV",
    ),
    "json-unknown-action": (
        _ucla_edit(lambda d: d.update(file_name="a07_s01_e00_v01")),
        "unknown action a07",
    ),
    "json-ragged-frames": (
        _ucla_edit(lambda d: d["skeletons"][3].pop()),
        "frame 3 has 19 joints, expected 20",
    ),
    "json-wrong-joint-count": (
        _ucla_edit(lambda d: [f.pop() for f in d["skeletons"]]),
        "frame 0 has 19 joints, expected 20",
    ),
    "json-two-values-joint": (
        _ucla_edit(lambda d: d["skeletons"][2][5].pop()),
        "frame 2, joint 5 has 2 values, expected 3",
    ),
    "json-string-value": (
        _ucla_edit(lambda d: d["skeletons"][1][4].__setitem__(0, "0.5")),
        "non-numeric value '0.5' in frame 1, joint 4",
    ),
    "json-null-value": (
        _ucla_edit(lambda d: d["skeletons"][1][4].__setitem__(0, None)),
        "non-numeric value None in frame 1, joint 4",
    ),
    "json-nan-value": (
        _ucla_edit(lambda d: d["skeletons"][1][4].__setitem__(0, float("nan"))),
        "non-finite value in frame 1, joint 4",
    ),
    "json-zero-frames": (_ucla_edit(lambda d: d.update(skeletons=[])), "skeletons has 0 frames"),
    "json-skeletons-not-list": (
        _ucla_edit(lambda d: d.update(skeletons={"0": []})),
        "skeletons is a JSON dict",
    ),
    "json-duplicate-sample-id": (
        lambda r: (r / UCLA_FILES[0]).read_bytes(),
        "duplicate sample id a01_s01_e00_v01",
    ),
}


def _good_npz(real: Path):
    from slim.data.readers.ntu import read_ntu_file

    sequences = [read_ntu_file(real / NTU_ONE), read_ntu_file(real / NTU_TWO)]
    x = np.zeros((2, 120, 2, 25, 3), np.float32)
    for n, seq in enumerate(sequences):
        x[n, : seq.num_frames, : seq.num_bodies] = np.nan_to_num(seq.joints)
    y = np.eye(60, dtype=np.float32)[[s.label for s in sequences]]
    x = x.reshape(2, 120, 150)
    return {"x_train": x, "y_train": y, "x_test": x[:1].copy(), "y_test": y[:1].copy()}


def _npz(edit):
    def build(real):
        arrays = _good_npz(real)
        edit(arrays)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    return build


NPZ_CASES = {
    "npz-wrong-shape": (
        _npz(lambda a: a.update(x_train=a["x_train"][:, :, :149])),
        "x_train has shape (2, 120, 149)",
    ),
    "npz-2d-x": (_npz(lambda a: a.update(x_test=a["x_test"][0])), "x_test has shape (120, 150)"),
    "npz-missing-key": (_npz(lambda a: a.pop("y_test")), "missing array(s) y_test"),
    "npz-y-not-one-hot": (
        _npz(lambda a: a["y_train"].__setitem__((1, 0), 1.0)),
        "y_train row 1 is not one-hot",
    ),
    "npz-y-labels-not-one-hot": (
        _npz(lambda a: a.update(y_train=np.array([[0], [49]]))),
        "y_train row 0 is not one-hot: [0]",
    ),
    "npz-length-mismatch": (
        _npz(lambda a: a.update(y_train=a["y_train"][:1])),
        "length mismatch: y_train has 1 rows, x_train 2",
    ),
    "npz-all-zero-sample": (_npz(lambda a: a["x_test"].__setitem__(0, 0.0)), "x_test sample 0 is all zeros"),
    "npz-nan": (
        _npz(lambda a: a["x_train"].__setitem__((1, 3, 7), np.nan)),
        "x_train sample 1 has non-finite values",
    ),
    "npz-object-array": (
        _npz(lambda a: a.update(y_test=np.array([{"a": 1}], dtype=object))),
        "y_test cannot be read",
    ),
    "npz-not-a-zip": (
        lambda r: b"PK\x03\x04 this is not really a zip archive",
        "not a readable .npz archive",
    ),
    "npz-truncated": (lambda r: _npz(lambda a: None)(r)[:3000], "not a readable .npz archive"),
    "npz-single-npy": (lambda r: _npy_bytes(), "a single .npy array"),
}


def _npy_bytes():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    return buffer.getvalue()


def _ingest_one_bad(tmp_path, fmt, good, bad_name, bad_bytes):
    src = tmp_path / "src"
    src.mkdir()
    for path in good:
        shutil.copy(path, src / path.name)
    (src / bad_name).parent.mkdir(parents=True, exist_ok=True)
    (src / bad_name).write_bytes(bad_bytes)
    out = tmp_path / "out"
    summary = ingest(fmt, src, out, max_bad_fraction=1.0, workers=1, progress=False)
    entries = [json.loads(line) for line in (out / QUARANTINE_FILE).read_text().splitlines()]
    return summary, entries, read_table(out / "sequences.parquet", columns=["sample_id", "source_path"])


def _check(summary, entries, table, bad_name, reason, line, good_files, rows=None):
    assert len(entries) == 1, entries
    (entry,) = entries
    assert entry["path"] == bad_name
    assert reason in entry["reason"], entry["reason"]
    assert len(entry["sha256"]) == 64
    if line is not None:
        assert entry["line"] == line
    assert bad_name not in table.column("source_path").to_pylist()
    assert summary["ingested_files"] == good_files
    assert table.num_rows == (good_files if rows is None else rows)
    assert summary["quarantined_files"] == 1


@pytest.mark.parametrize("case", sorted(NTU_CASES))
def test_ntu_malformed(case, ntu_raw_dir, tmp_path):
    source, build, line, reason = NTU_CASES[case]
    bad_name = source.replace("R00", "R09")  # a valid, unique name, so that the content is what is wrong
    good = sorted(ntu_raw_dir.glob("*.skeleton"))
    _check(
        *_ingest_one_bad(tmp_path, "ntu", good, bad_name, build(ntu_raw_dir)),
        bad_name,
        reason,
        line,
        len(good),
    )


@pytest.mark.parametrize("case", sorted(NTU_NAME_CASES))
def test_ntu_malformed_name(case, ntu_raw_dir, tmp_path):
    bad_name, build, reason = NTU_NAME_CASES[case]
    good = sorted(ntu_raw_dir.glob("*.skeleton"))
    _check(
        *_ingest_one_bad(tmp_path, "ntu", good, bad_name, build(ntu_raw_dir)),
        bad_name,
        reason,
        None,
        len(good),
    )


@pytest.mark.parametrize("case", sorted(UCLA_CASES))
def test_ucla_malformed(case, ucla_dir, tmp_path):
    build, reason = UCLA_CASES[case]
    good = [ucla_dir / name for name in UCLA_FILES]
    bad_name = "zz_bad.json"  # sorts after the good files: a duplicate is the later file
    _check(
        *_ingest_one_bad(tmp_path, "nw-ucla", good, bad_name, build(ucla_dir)),
        bad_name,
        reason,
        None,
        len(good),
    )


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_npz_malformed(case, ntu_raw_dir, tmp_path):
    build, reason = NPZ_CASES[case]
    good = tmp_path / "good" / "NTU60_CS.npz"
    good.parent.mkdir()
    good.write_bytes(_npz(lambda a: None)(ntu_raw_dir))
    summary, entries, table = _ingest_one_bad(tmp_path, "npz", [good], "zz_bad.npz", build(ntu_raw_dir))
    _check(summary, entries, table, "zz_bad.npz", reason, None, 1, rows=3)  # 2 train + 1 test samples


ACCEPTED = {
    "crlf": lambda r: (r / NTU_ONE).read_bytes().replace(b"\n", b"\r\n"),
    "lf-from-crlf": lambda r: (r / NTU_CRLF).read_bytes().replace(b"\r\n", b"\n"),
    "utf8-bom": lambda r: b"\xef\xbb\xbf" + (r / NTU_ONE).read_bytes(),
    "trailing-blank-lines": lambda r: (r / NTU_ONE).read_bytes() + b"\n\r\n  \n",
    "no-final-newline": lambda r: (r / NTU_ONE).read_bytes().rstrip(),
    "zero-body-frames": lambda r: b"3\n0\n0\n0\n",
    "padded-count-lines": lambda r: _edit_line(r, 3, lambda s: " 25 ").replace(b"\n1\n", b"\n 1\t\n", 1),
    "tabs-and-double-spaces-in-a-joint-line": lambda r: _edit_line(r, 10, lambda s: s.replace(" ", " \t ")),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_ntu_variants_accepted(case, ntu_raw_dir, tmp_path):
    good = sorted(ntu_raw_dir.glob("*.skeleton"))
    summary, entries, table = _ingest_one_bad(
        tmp_path, "ntu", good, "S099C001P001R001A001.skeleton", ACCEPTED[case](ntu_raw_dir)
    )
    assert entries == [] and summary["quarantined_files"] == 0 and table.num_rows == len(good) + 1


def test_ucla_bom_accepted(ucla_dir, tmp_path):
    good = [ucla_dir / name for name in UCLA_FILES[1:]]
    bom = b"\xef\xbb\xbf" + (ucla_dir / UCLA_FILES[0]).read_bytes()
    summary, entries, table = _ingest_one_bad(tmp_path, "nw-ucla", good, UCLA_FILES[0], bom)
    assert entries == [] and table.num_rows == 3


def test_corpus_is_large_enough():
    assert len(NTU_CASES) + len(NTU_NAME_CASES) + len(UCLA_CASES) + len(NPZ_CASES) >= 25
