"""NW-UCLA `all_sqe` JSON (Kinect v1, 20 joints, one body), as distributed with CTR-GCN.

    {"file_name": "aAA_sSS_eEE_vVV", "skeletons": [[[x, y, z] x 20 joints] x frames], "label": 1..10}

`label` numbers the 10 actions a01-a06, a08, a09, a11, a12 in order; we store it 0-based and check it
agrees with the action in `file_name`. The sample id is `file_name` (the episode eEE becomes
`replication`, the view vVV `view`). A leading UTF-8 BOM is accepted (JSON bytes may carry one).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from slim.data.readers import MalformedSkeletonError
from slim.data.sequence import SkeletonSequence

ACTIONS = ("a01", "a02", "a03", "a04", "a05", "a06", "a08", "a09", "a11", "a12")
NUM_JOINTS = 20
NAME = re.compile(r"a(\d{2})_s(\d{2})_e(\d{2})_v(\d{2})")
KEYS = ("file_name", "skeletons", "label")


def read_ucla_file(path: str | Path) -> SkeletonSequence:
    path = Path(path)
    return parse_ucla(path.read_bytes(), path)


def parse_ucla(data: bytes, path: str | Path) -> SkeletonSequence:
    """Parse the bytes of one NW-UCLA JSON file; `path` names the file in errors."""
    path = Path(path)
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise MalformedSkeletonError(
            path, exc.lineno, f"not valid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    except ValueError as exc:  # undecodable bytes
        raise MalformedSkeletonError(path, None, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedSkeletonError(
            path, None, f"top level is a JSON {type(doc).__name__}, expected an object"
        )
    missing = [key for key in KEYS if key not in doc]
    if missing:
        raise MalformedSkeletonError(path, None, f"missing key(s) {', '.join(missing)}")
    name, label = doc["file_name"], doc["label"]
    match = NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise MalformedSkeletonError(path, None, f"file_name {name!r} does not match aAA_sSS_eEE_vVV")
    action_number, subject, episode, view = (int(g) for g in match.groups())
    action = f"a{action_number:02d}"
    if action not in ACTIONS:
        raise MalformedSkeletonError(path, None, f"file_name {name!r} has unknown action {action}")
    if type(label) is not int or not 1 <= label <= len(ACTIONS):
        raise MalformedSkeletonError(
            path, None, f"label {label!r} out of range: expected an integer in 1..{len(ACTIONS)}"
        )
    if ACTIONS[label - 1] != action:
        raise MalformedSkeletonError(
            path, None, f"label {label} is action {ACTIONS[label - 1]} but file_name says {action}"
        )
    return SkeletonSequence(
        sample_id=name,
        dataset="nw-ucla",
        layout="ucla20",
        label=label - 1,
        action=action,
        subject=subject,
        view=view,
        setup=None,
        replication=episode,
        joints=_joints(doc["skeletons"], path)[:, None],  # (T, 1 body, 20, 3)
    )


def _joints(frames: object, path: Path) -> np.ndarray:
    """(T, 20, 3) float32 from the `skeletons` list, with the first problem named where there is one."""
    if not isinstance(frames, list):
        raise MalformedSkeletonError(
            path, None, f"skeletons is a JSON {type(frames).__name__}, expected a list of frames"
        )
    if not frames:
        raise MalformedSkeletonError(path, None, "skeletons has 0 frames")
    try:
        array = np.asarray(frames)
    except ValueError:  # ragged
        array = None
    if array is None or array.shape[1:] != (NUM_JOINTS, 3) or array.dtype.kind not in "fi":
        raise MalformedSkeletonError(path, None, _first_problem(frames))
    if not np.isfinite(array).all():
        frame, joint = np.argwhere(~np.isfinite(array))[0, :2]
        raise MalformedSkeletonError(path, None, f"non-finite value in frame {frame}, joint {joint}")
    return array.astype(np.float32)


def _first_problem(frames: list) -> str:
    """Describe the first frame or joint that is not 20 joints of 3 finite numbers."""
    for f, frame in enumerate(frames):
        if not isinstance(frame, list) or len(frame) != NUM_JOINTS:
            size = len(frame) if isinstance(frame, list) else type(frame).__name__
            return f"frame {f} has {size} joints, expected {NUM_JOINTS}"
        for j, joint in enumerate(frame):
            if not isinstance(joint, list) or len(joint) != 3:
                size = len(joint) if isinstance(joint, list) else type(joint).__name__
                return f"frame {f}, joint {j} has {size} values, expected 3 (x, y, z)"
            for value in joint:
                if type(value) not in (int, float) or not math.isfinite(value):
                    return f"non-numeric value {value!r} in frame {f}, joint {j}"
    return "skeletons is not a list of frames of 20 joints of 3 numbers"
