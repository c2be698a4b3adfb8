"""NTU RGB+D raw `.skeleton` text files (Kinect v2, 25 joints per body).

A file is one value group per line, LF or CRLF (the release is CRLF; copies are often LF):

    <frames>
    per frame:  <bodies>
      per body: <10 body values, the first the tracking id>
                <joints = 25>
                25 joint lines of 12 values: x y z depthX depthY colorX colorY qw qx qy qz state

Speed: the header lines (counts, tracking ids) are walked in Python; the joint lines, ~95% of the
bytes, go through one pyarrow CSV call. Where that fast path refuses the text (odd spacing, a bad
token, an out-of-range value), a plain per-line parser redoes the joint lines: it accepts whatever
is valid and names the first bad line. The fast path accepts only what the slow one accepts.

Kept losslessly: x, y, z (float32) and the per-joint tracking state (uint8) of every body in every
frame, bodies in slots by first appearance of their tracking id (compared as digit strings: the ids
are ~7.2e16 and do not survive float64). Frames with no body are kept (all slots NaN), and so is a
file whose frames have no body at all (zero slots). Not kept: depth/colour coordinates, joint
orientations, and body values other than the tracking id. Lines are checked for their count of
values; of the values, those kept are checked to be finite numbers (and states 0, 1 or 2). A file
of 0 frames, a body count above 6 and a tracking id twice in one frame are errors. A leading UTF-8
BOM is accepted.
"""

from __future__ import annotations

import math
import re
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from slim.data.readers import MalformedSkeletonError
from slim.data.sequence import SkeletonSequence

NUM_JOINTS = 25
JOINT_VALUES = 12
BODY_VALUES = 10
MAX_BODIES = 6  # Kinect v2 tracks at most six people
TRACKING_STATES = (0, 1, 2)  # not tracked, inferred, tracked
NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
UTF8_BOM = b"\xef\xbb\xbf"
# header lines as they appear (LF or CRLF): one dict or set lookup per line in the per-body loop
_BODY_COUNTS = {b"%d%s" % (k, end): k for k in range(MAX_BODIES + 1) for end in (b"", b"\r")}
_JOINT_COUNT_LINES = {b"%d%s" % (NUM_JOINTS, end) for end in (b"", b"\r")}

_COLUMNS = [f"v{k}" for k in range(JOINT_VALUES)]
_KEPT_INDEX = (0, 1, 2, JOINT_VALUES - 1)  # x, y, z, tracking state
_KEPT = [_COLUMNS[k] for k in _KEPT_INDEX]
_PARSE = pacsv.ParseOptions(delimiter=" ", quote_char=False, double_quote=False, ignore_empty_lines=False)
_CONVERT = pacsv.ConvertOptions(
    column_types={c: pa.float64() for c in _KEPT},
    include_columns=_KEPT,
    null_values=[],
    strings_can_be_null=False,
)


def read_ntu_file(path: str | Path) -> SkeletonSequence:
    path = Path(path)
    return parse_ntu(path.read_bytes(), path)


def parse_ntu(data: bytes, path: str | Path) -> SkeletonSequence:
    """Parse the bytes of one `.skeleton` file; `path` gives the sample id and names the file in errors."""
    path = Path(path)
    setup, camera, performer, replication, action = parse_ntu_name(path)
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise MalformedSkeletonError(path, None, "empty file")
    num_frames, num_slots, frame_of_block, slot_of_block, starts = _walk_headers(lines, path)
    xyz, state = _parse_joint_lines(lines, starts, path)
    joints = np.full((num_frames, num_slots, NUM_JOINTS, 3), np.nan, dtype=np.float32)
    tracking_state = np.zeros((num_frames, num_slots, NUM_JOINTS), dtype=np.uint8)
    joints[frame_of_block, slot_of_block] = xyz.reshape(len(starts), NUM_JOINTS, 3)
    tracking_state[frame_of_block, slot_of_block] = state.reshape(len(starts), NUM_JOINTS)
    return SkeletonSequence(
        sample_id=path.stem,
        dataset="ntu",
        layout="ntu25",
        label=action - 1,
        action=f"A{action:03d}",
        subject=performer,
        view=camera,
        setup=setup,
        replication=replication,
        joints=joints,
        tracking_state=tracking_state,
    )


def parse_ntu_name(path: Path) -> tuple[int, int, int, int, int]:
    """(setup, camera, performer, replication, action) from a name like S001C002P003R002A013."""
    match = NAME.fullmatch(path.stem)
    if match is None:
        raise MalformedSkeletonError(
            path, None, f"file name {path.name!r} does not match SsssCcccPpppRrrrAaaa.skeleton"
        )
    fields = tuple(int(g) for g in match.groups())
    if fields[4] == 0:
        raise MalformedSkeletonError(
            path, None, f"file name {path.name!r} has action A000 (actions are 1-based)"
        )
    return fields  # type: ignore[return-value]


def _walk_headers(lines: list[bytes], path: Path):
    """Follow the counts; return frames, slots, and per body block: frame, slot, index of its first joint line.

    The common case is inlined (this loop runs per body); anything unusual goes to the helpers, which
    re-check the line and raise the precise error.
    """
    n = len(lines)
    num_frames, i = _count(lines, 0, "frame count", path), 1
    if num_frames == 0:
        raise MalformedSkeletonError(path, 1, "0 frames")
    slot_of_id: dict[bytes, int] = {}
    frames, slots, starts = [], [], []
    for frame in range(num_frames):
        num_bodies = _BODY_COUNTS.get(lines[i]) if i < n else None
        if num_bodies is None:
            num_bodies = _count(lines, i, f"body count of frame {frame}", path)
        if num_bodies > MAX_BODIES:
            raise MalformedSkeletonError(
                path, i + 1, f"body count {num_bodies} exceeds the Kinect maximum {MAX_BODIES}"
            )
        i += 1
        seen: set[bytes] = set()
        for body in range(num_bodies):
            info = lines[i].split() if i < n else []
            if len(info) != BODY_VALUES or not info[0].isdigit():
                _bad_body_line(lines, i, f"body {body} of frame {frame}", path)
            tracking_id = info[0]
            if tracking_id in seen:
                raise MalformedSkeletonError(
                    path, i + 1, f"tracking id {tracking_id.decode()} twice in frame {frame}"
                )
            seen.add(tracking_id)
            if i + 1 >= n or lines[i + 1] not in _JOINT_COUNT_LINES:
                num_joints = _count(lines, i + 1, f"joint count of body {body} of frame {frame}", path)
                if num_joints != NUM_JOINTS:
                    raise MalformedSkeletonError(
                        path, i + 2, f"body has {num_joints} joints, expected {NUM_JOINTS}"
                    )
            i += 2
            if i + NUM_JOINTS > n:
                raise MalformedSkeletonError(
                    path,
                    n,
                    f"truncated: the file ends inside the joint lines of body {body} of frame {frame}",
                )
            frames.append(frame)
            slots.append(slot_of_id.setdefault(tracking_id, len(slot_of_id)))
            starts.append(i)
            i += NUM_JOINTS
    if i < n:
        raise MalformedSkeletonError(path, i + 1, f"extra data after the last of the {num_frames} frames")
    return (
        num_frames,
        len(slot_of_id),
        np.array(frames, dtype=np.intp),
        np.array(slots, dtype=np.intp),
        starts,
    )


def _count(lines: list[bytes], i: int, what: str, path: Path) -> int:
    if i >= len(lines):
        raise MalformedSkeletonError(path, len(lines), f"truncated: the file ends before the {what}")
    text = lines[i].strip()
    if text.isdigit():
        return int(text)
    if text[:1] == b"-" and text[1:].isdigit():
        raise MalformedSkeletonError(path, i + 1, f"negative {what} {text.decode()}")
    raise MalformedSkeletonError(path, i + 1, f"expected the {what} (an integer), found {_show(text)}")


def _bad_body_line(lines: list[bytes], i: int, what: str, path: Path) -> None:
    """Raise the error for a body info line that is missing, or is not 10 values starting with a tracking id."""
    if i >= len(lines):
        raise MalformedSkeletonError(
            path, len(lines), f"truncated: the file ends before the info line of {what}"
        )
    values = lines[i].split()
    if len(values) != BODY_VALUES:
        raise MalformedSkeletonError(
            path,
            i + 1,
            f"info line of {what} has {len(values)} values, expected {BODY_VALUES}: {_show(lines[i])}",
        )
    raise MalformedSkeletonError(
        path, i + 1, f"tracking id {_show(values[0])} of {what} is not an unsigned integer"
    )


def _parse_joint_lines(lines: list[bytes], starts: list[int], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """x, y, z (n, 3) and tracking state (n,), float64, of the joint lines of the blocks at `starts`."""
    expected = len(starts) * NUM_JOINTS
    if expected == 0:
        return np.empty((0, 3)), np.empty(0)
    text = b"\n".join(chain.from_iterable(lines[s : s + NUM_JOINTS] for s in starts))
    read = pacsv.ReadOptions(column_names=_COLUMNS, use_threads=False, block_size=len(text) + 1)
    try:  # the streaming reader: read_csv hands work to an I/O thread even with use_threads=False,
        # and under load the waits doubled its wall time
        reader = pacsv.open_csv(
            pa.py_buffer(text), read_options=read, parse_options=_PARSE, convert_options=_CONVERT
        )
        table = reader.read_all()
    except pa.ArrowInvalid:
        return _parse_joint_lines_slowly(lines, starts, path)
    if table.num_rows != expected:
        return _parse_joint_lines_slowly(lines, starts, path)
    x, y, z, state = (_float64s(table.column(c)) for c in _KEPT)
    if not (
        np.isfinite(x).all()
        and np.isfinite(y).all()
        and np.isfinite(z).all()
        and np.isin(state, TRACKING_STATES).all()
    ):
        return _parse_joint_lines_slowly(lines, starts, path)
    return np.column_stack([x, y, z]), state


def _float64s(column: pa.ChunkedArray) -> np.ndarray:
    """The values of a null-free float64 column, read from its buffers: `to_numpy()` would import pandas
    on first use in every worker process (~0.5 s each)."""
    return np.concatenate(
        [np.frombuffer(a.buffers()[1], dtype=np.float64)[a.offset : a.offset + len(a)] for a in column.chunks]
    )


def _parse_joint_lines_slowly(
    lines: list[bytes], starts: list[int], path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """The reference parser of joint lines: line by line; raises on the first bad line."""
    rows = []
    for i in chain.from_iterable(range(s, s + NUM_JOINTS) for s in starts):
        tokens = lines[i].split()
        if len(tokens) != JOINT_VALUES:
            raise MalformedSkeletonError(
                path,
                i + 1,
                f"joint line has {len(tokens)} values, expected {JOINT_VALUES}: {_show(lines[i])}",
            )
        row = [_number(tokens[k], path, i) for k in _KEPT_INDEX]
        if row[-1] not in TRACKING_STATES:
            raise MalformedSkeletonError(
                path, i + 1, f"joint tracking state {_show(tokens[-1])} is not 0, 1 or 2"
            )
        rows.append(row)
    values = np.array(rows, dtype=np.float64)
    return values[:, :3], values[:, 3]


def _number(token: bytes, path: Path, i: int) -> float:
    try:
        value = float(token)
    except ValueError:
        raise MalformedSkeletonError(path, i + 1, f"non-numeric value {_show(token)}") from None
    if not math.isfinite(value):
        raise MalformedSkeletonError(path, i + 1, f"non-finite value {_show(token)}")
    return value


def _show(text: bytes, limit: int = 60) -> str:
    """A short printable rendering of (possibly binary) file content for an error message."""
    shown = repr(text[:limit])[1:]
    return shown + ("..." if len(text) > limit else "")
