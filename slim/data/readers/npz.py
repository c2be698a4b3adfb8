"""CTR-GCN style `.npz` archives of NTU skeletons: x_train, y_train, x_test, y_test.

`x_*` is (N, frames, 150): per frame 2 bodies x 25 joints x (x, y, z), zero-padded; `y_*` is one-hot
(N, classes). Each sample becomes one sequence: trailing all-zero frames are padding and dropped, a
body whose 75 values are all zero in a frame is absent (NaN), and a body slot absent from every frame
is dropped (slots keep their order of first appearance). The archive does not keep performer, camera,
setup or replication, so those are null; the split the sample came from is kept in its sample id,
`<archive stem>-<train|test>-<index:06d>` (e.g. `NTU60_CS-train-000123`), so that several archives
can be ingested together.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from slim.data.readers import MalformedSkeletonError
from slim.data.sequence import SkeletonSequence

SPLITS = ("train", "test")
NUM_BODIES = 2
NUM_JOINTS = 25
VALUES_PER_FRAME = NUM_BODIES * NUM_JOINTS * 3


def read_npz_file(path: str | Path) -> list[SkeletonSequence]:
    path = Path(path)
    return parse_npz(path.read_bytes(), path)


def parse_npz(data: bytes, path: str | Path) -> list[SkeletonSequence]:
    """All samples of one archive, train first, in archive order; one error for the whole archive."""
    path = Path(path)
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise MalformedSkeletonError(path, None, f"not a readable .npz archive: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise MalformedSkeletonError(
            path, None, "a single .npy array, expected an .npz archive of x_*/y_* arrays"
        )
    with archive:
        missing = [f"{v}_{s}" for s in SPLITS for v in "xy" if f"{v}_{s}" not in archive.files]
        if missing:
            raise MalformedSkeletonError(path, None, f"missing array(s) {', '.join(missing)}")
        arrays = {key: _load(archive, key, path) for key in (f"{v}_{s}" for s in SPLITS for v in "xy")}
    sequences = []
    for split in SPLITS:
        x, labels = _check_split(arrays[f"x_{split}"], arrays[f"y_{split}"], split, path)
        for i in range(len(x)):
            sequences.append(
                _sequence(x[i], int(labels[i]), f"{path.stem}-{split}-{i:06d}", f"x_{split} sample {i}", path)
            )
    return sequences


def _load(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise MalformedSkeletonError(path, None, f"array {key} cannot be read: {exc}") from None


def _check_split(x: np.ndarray, y: np.ndarray, split: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validate one split; return x as (N, frames, 2, 25, 3) float32 and the 0-based labels."""
    if x.ndim != 3 or x.shape[2] != VALUES_PER_FRAME or x.shape[1] == 0 or x.dtype.kind not in "fiu":
        raise MalformedSkeletonError(
            path,
            None,
            f"x_{split} has shape {x.shape} ({x.dtype}), expected numbers of shape (N, frames, 150)",
        )
    if y.ndim != 2 or y.dtype.kind not in "fiub":
        raise MalformedSkeletonError(
            path, None, f"y_{split} has shape {y.shape} ({y.dtype}), expected one-hot (N, classes)"
        )
    if len(y) != len(x):
        raise MalformedSkeletonError(
            path, None, f"length mismatch: y_{split} has {len(y)} rows, x_{split} {len(x)}"
        )
    bad_rows = np.flatnonzero(~(((y == 0) | (y == 1)).all(axis=1) & (y.sum(axis=1) == 1)))
    if bad_rows.size:
        raise MalformedSkeletonError(
            path, None, f"y_{split} row {bad_rows[0]} is not one-hot: {y[bad_rows[0]].tolist()}"
        )
    not_finite = np.flatnonzero(~np.isfinite(x).all(axis=(1, 2)))
    if not_finite.size:
        raise MalformedSkeletonError(path, None, f"x_{split} sample {not_finite[0]} has non-finite values")
    frames = x.astype(np.float32, copy=False).reshape(len(x), x.shape[1], NUM_BODIES, NUM_JOINTS, 3)
    return frames, y.argmax(axis=1)


def _sequence(frames: np.ndarray, label: int, sample_id: str, what: str, path: Path) -> SkeletonSequence:
    present = (frames != 0).any(axis=(2, 3))  # (frames, bodies)
    used_frames = np.flatnonzero(present.any(axis=1))
    if used_frames.size == 0:
        raise MalformedSkeletonError(path, None, f"{what} is all zeros")
    end = used_frames[-1] + 1
    first_seen = np.where(present[:end].any(axis=0), present[:end].argmax(axis=0), end)
    slots = [b for b in np.argsort(first_seen, kind="stable") if first_seen[b] < end]
    joints = frames[:end, slots].copy()
    joints[~present[:end, slots]] = np.nan
    return SkeletonSequence(
        sample_id=sample_id,
        dataset="ntu",
        layout="ntu25",
        label=label,
        action=f"A{label + 1:03d}",
        subject=None,
        view=None,
        setup=None,
        replication=None,
        joints=joints,
    )
