"""Readers on the real bundled files: NTU raw text, NW-UCLA JSON, and a CTR-GCN npz built from NTU."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from slim.data.readers import MalformedSkeletonError, ntu
from slim.data.readers.npz import parse_npz
from slim.data.readers.ntu import parse_ntu, read_ntu_file
from slim.data.readers.ucla import read_ucla_file


def naive_ntu(path):
    """Reference parser: line by line, tracking ids as strings, slots by first appearance."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header_frames, i, slots, records = int(lines[0]), 1, {}, []
    for frame in range(header_frames):
        bodies = int(lines[i])
        i += 1
        for _ in range(bodies):
            slot = slots.setdefault(lines[i].split()[0], len(slots))
            assert int(lines[i + 1]) == 25
            rows = [line.split() for line in lines[i + 2 : i + 27]]
            records.append(
                (frame, slot, [[float(v) for v in r[:3]] for r in rows], [int(r[11]) for r in rows])
            )
            i += 27
    joints = np.full((header_frames, len(slots), 25, 3), np.nan, np.float32)
    state = np.zeros((header_frames, len(slots), 25), np.uint8)
    for frame, slot, xyz, st in records:
        joints[frame, slot], state[frame, slot] = xyz, st
    return header_frames, joints, state


def test_every_ntu_file_equals_the_naive_parse(ntu_raw_dir):
    files = sorted(ntu_raw_dir.glob("*.skeleton"))
    assert len(files) == 9
    two_body = 0
    for path in files:
        seq = read_ntu_file(path)
        header_frames, joints, state = naive_ntu(path)
        assert seq.num_frames == header_frames
        assert seq.joints.dtype == np.float32 and seq.tracking_state.dtype == np.uint8
        np.testing.assert_array_equal(seq.joints, joints)
        np.testing.assert_array_equal(seq.tracking_state, state)
        two_body += seq.num_bodies == 2
        assert seq.layout == "ntu25" and seq.num_joints == 25
    assert two_body == 6  # A050 and the five S017 files (the data README says five)


def test_ntu_name_fields_and_label(ntu_raw_dir):
    seq = read_ntu_file(ntu_raw_dir / "S017C003P020R002A056.skeleton")
    assert (seq.sample_id, seq.setup, seq.view, seq.subject, seq.replication) == (
        "S017C003P020R002A056",
        17,
        3,
        20,
        2,
    )
    assert (seq.label, seq.action, seq.dataset) == (55, "A056", "ntu")


def test_fast_and_slow_joint_parsers_agree(ntu_raw_dir):
    for path in sorted(ntu_raw_dir.glob("*.skeleton"))[:3]:
        lines = path.read_bytes().split(b"\n")
        while not lines[-1].strip():
            lines.pop()
        _, _, _, _, starts = ntu._walk_headers(lines, path)
        fast, slow = (
            ntu._parse_joint_lines(lines, starts, path),
            ntu._parse_joint_lines_slowly(lines, starts, path),
        )
        for a, b in zip(fast, slow, strict=True):
            np.testing.assert_array_equal(a, b)


def test_crlf_lf_and_bom_give_the_same_sequence(ntu_raw_dir, tmp_path):
    crlf = ntu_raw_dir / "S001C001P001R001A011.skeleton"
    assert b"\r\n" in crlf.read_bytes()
    lf = crlf.read_bytes().replace(b"\r\n", b"\n")
    reference = read_ntu_file(crlf)
    for data in (lf, b"\xef\xbb\xbf" + lf, lf.replace(b"\n", b"\r\n"), lf + b"\n\n"):
        seq = parse_ntu(data, crlf)
        np.testing.assert_array_equal(seq.joints, reference.joints)
        np.testing.assert_array_equal(seq.tracking_state, reference.tracking_state)


def _frames(path):
    """The real file as (frame count line, [[body blocks of 27 lines] per frame])."""
    lines = path.read_text().splitlines()
    frames, i = [], 1
    for _ in range(int(lines[0])):
        bodies = int(lines[i])
        frames.append([lines[i + 1 + 27 * b : i + 28 + 27 * b] for b in range(bodies)])
        i += 1 + 27 * bodies
    return frames


def _render(frames):
    out = [str(len(frames))]
    for bodies in frames:
        out.append(str(len(bodies)))
        for block in bodies:
            out += block
    return ("\n".join(out) + "\n").encode()


def test_bodies_appear_and_disappear_in_slots_by_first_appearance(ntu_raw_dir, tmp_path):
    path = ntu_raw_dir / "S017C003P020R002A054.skeleton"
    frames = _frames(path)
    for f in range(5, 10):  # second body leaves, then comes back
        frames[f] = frames[f][:1]
    for f in range(15, 18):  # a frame with no body at all
        frames[f] = []
    for f in range(20, 42):  # the second body comes back under a new id, 1 above the first (same as float64)
        new_id = str(int(frames[f][0][0].split()[0]) + 1)
        frames[f][1] = [" ".join([new_id, *frames[f][1][0].split()[1:]]), *frames[f][1][1:]]
    seq = parse_ntu(_render(frames), path)
    assert seq.num_frames == 42 and seq.num_bodies == 3
    present = ~np.isnan(seq.joints).all(axis=(2, 3))
    assert present[:, 0].sum() == 42 - 3
    assert (
        present[:5, 1].all()
        and not present[5:10, 1].any()
        and present[10:15, 1].all()
        and not present[20:, 1].any()
    )
    assert not present[15:18].any() and present[20:, 2].all() and not present[:20, 2].any()
    assert (seq.tracking_state[~present] == 0).all()
    reference = read_ntu_file(path)
    np.testing.assert_array_equal(seq.joints[20:, 2], reference.joints[20:, 1])


def test_ntu_error_names_file_and_line(ntu_raw_dir, tmp_path):
    data = ntu_raw_dir.joinpath("S001C001P001R001A001.skeleton").read_bytes().split(b"\n")
    data[10] = data[10].replace(b" ", b" x", 1)
    with pytest.raises(MalformedSkeletonError) as error:
        parse_ntu(b"\n".join(data), tmp_path / "S001C001P001R001A001.skeleton")
    assert error.value.line == 11 and "non-numeric value" in error.value.reason
    assert str(error.value).startswith(f"{tmp_path / 'S001C001P001R001A001.skeleton'}:11: ")


def test_ucla_file_fields(ucla_dir):
    seq = read_ucla_file(sorted(ucla_dir.glob("a08_*.json"))[0])
    assert seq.action == "a08" and seq.label == 6 and seq.layout == "ucla20" and seq.num_bodies == 1
    assert (
        seq.joints.dtype == np.float32 and seq.joints.shape[1:] == (1, 20, 3) and seq.tracking_state is None
    )
    assert seq.sample_id.startswith("a08_") and seq.setup is None


def to_ctrgcn(sequences, frames=300, classes=60):
    """Sequences -> CTR-GCN arrays (N, frames, 150) zero-padded, one-hot (N, classes)."""
    x = np.zeros((len(sequences), frames, 2, 25, 3), np.float32)
    for n, seq in enumerate(sequences):
        x[n, : seq.num_frames, : seq.num_bodies] = np.nan_to_num(seq.joints, nan=0.0)
    y = np.eye(classes, dtype=np.float32)[[s.label for s in sequences]]
    return x.reshape(len(sequences), frames, 150), y


def npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_npz_samples_equal_the_source_sequences(ntu_raw_dir, tmp_path):
    sequences = [read_ntu_file(p) for p in sorted(ntu_raw_dir.glob("*.skeleton"))]
    x, y = to_ctrgcn(sequences)
    x[0, :10, 75:] = 0.5  # a second body in the first frames of a one-body sample, absent later
    x_train, y_train, x_test, y_test = x[:6], y[:6], x[6:], y[6:]
    got = parse_npz(
        npz_bytes(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test), tmp_path / "NTU60_CS.npz"
    )
    assert [s.sample_id for s in got][:2] == ["NTU60_CS-train-000000", "NTU60_CS-train-000001"]
    assert got[6].sample_id == "NTU60_CS-test-000000"
    for seq, source in zip(got[1:], sequences[1:], strict=True):
        np.testing.assert_array_equal(seq.joints, source.joints)
        assert (seq.label, seq.action, seq.layout, seq.subject, seq.setup) == (
            source.label,
            source.action,
            "ntu25",
            None,
            None,
        )
    first = got[0]
    assert first.num_bodies == 2 and first.num_frames == sequences[0].num_frames
    assert np.isnan(first.joints[10:, 1]).all() and (first.joints[:10, 1] == 0.5).all()


def test_npz_slots_follow_first_appearance(ntu_raw_dir, tmp_path):
    seq = read_ntu_file(ntu_raw_dir / "S001C001P001R001A001.skeleton")
    x, y = to_ctrgcn([seq])
    x = x.reshape(1, 300, 2, 25, 3)[:, :, ::-1].reshape(1, 300, 150)  # the body sits in slot 1
    got = parse_npz(npz_bytes(x_train=x, y_train=y, x_test=x[:0], y_test=y[:0]), tmp_path / "a.npz")
    assert len(got) == 1 and got[0].num_bodies == 1
    np.testing.assert_array_equal(got[0].joints, seq.joints)


def test_copied_files_are_read_from_their_bytes(ntu_raw_dir, tmp_path):
    copy = tmp_path / "S001C001P001R001A001.skeleton"
    shutil.copy(ntu_raw_dir / copy.name, copy)
    np.testing.assert_array_equal(read_ntu_file(copy).joints, read_ntu_file(ntu_raw_dir / copy.name).joints)
