"""Clip preprocessing on stored sequences (numpy), from a raw `(T, M, J, 3)` array to model tensors.

A stored clip is float32 `(frames, bodies, joints, 3)` with NaN where a body is absent (see
`slim.data.sequence`). The steps, each a pure function:

    clean = prepare_clip(joints, layout)           # pick bodies, drop invalid frames, centre, face the view
    x = training_clip(clean, rng)                  # (3, T, J) one random person
    x = eval_clip(clean, frames=64)                # (M, 3, 64, J) whole clip, absent persons zero

Temporal crops and resampling work in continuous frame-index space: a crop is an interval
`[start, start + extent]` of frame indices, sampled at `frames` evenly spaced points (both ends
included) with linear interpolation between the two neighbouring frames.
"""

from __future__ import annotations

import numpy as np

from slim.layouts import Layout


def body_presence(joints: np.ndarray) -> np.ndarray:
    """(T, M) bool: the body has every coordinate finite and is not all zeros (Kinect writes zeros)."""
    finite = np.isfinite(joints).all(axis=(2, 3))
    nonzero = np.abs(np.nan_to_num(joints)).sum(axis=(2, 3)) > 0
    return finite & nonzero


def drop_invalid_frames(joints: np.ndarray) -> np.ndarray:
    """Keep frames where at least one body is present; other bodies there become NaN (absent)."""
    present = body_presence(joints)
    out = np.where(present[:, :, None, None], joints, np.nan).astype(np.float32)
    return out[present.any(axis=1)]


def motion_energy(joints: np.ndarray) -> np.ndarray:
    """(M,) per body: variance over time of its frame-to-frame displacement, summed over joints and axes.

    Only displacements between consecutive frames where the body is present count; a body with fewer
    than two such displacements has energy 0. Variance (not the mean) of the displacement ranks
    articulated motion above a steady drift of the whole body.
    """
    present = body_presence(joints)
    pairs = present[1:] & present[:-1]  # (T-1, M)
    disp = np.nan_to_num(joints[1:] - joints[:-1])  # (T-1, M, J, 3)
    n = pairs.sum(axis=0)  # (M,)
    w = pairs[:, :, None, None]
    safe_n = np.maximum(n, 1)[:, None, None]
    mean = (disp * w).sum(axis=0) / safe_n
    var = (((disp - mean) ** 2) * w).sum(axis=0) / safe_n
    return np.where(n >= 2, var.sum(axis=(1, 2)), 0.0)


def select_bodies(joints: np.ndarray, max_bodies: int) -> np.ndarray:
    """(T, max_bodies, J, 3): the `max_bodies` most energetic bodies, most energetic first.

    Bodies never present are never chosen; missing slots are NaN. Ties keep the stored slot order.
    """
    present = body_presence(joints).any(axis=0)
    energy = np.where(present, motion_energy(joints), -np.inf)
    order = np.argsort(-energy, kind="stable")[:max_bodies]
    order = order[present[order]]
    out = np.full((joints.shape[0], max_bodies, *joints.shape[2:]), np.nan, dtype=np.float32)
    out[:, : len(order)] = joints[:, order]
    return out


def _reference_frame(joints: np.ndarray, layout: Layout) -> int | None:
    """The first frame where the first body's centre joint is present (None if it never is)."""
    finite = np.isfinite(joints[:, 0, layout.centre]).all(axis=1)
    return int(np.argmax(finite)) if finite.any() else None


def centre_clip(joints: np.ndarray, layout: Layout) -> np.ndarray:
    """Translate so that the first body's centre joint at its first present frame is the origin.

    That is frame 0 whenever the first body is present there; NaN (absent) entries stay NaN, and a
    clip with no present first body is returned unchanged.
    """
    frame = _reference_frame(joints, layout)
    if frame is None:
        return joints.copy()
    return (joints - joints[frame, 0, layout.centre]).astype(np.float32)


def view_rotation(pose: np.ndarray, layout: Layout) -> np.ndarray | None:
    """(3, 3) rotation taking one pose `(J, 3)` to its body frame, or None if the pose is degenerate.

    Rows are the body's axes in camera coordinates: y along the spine (`layout.spine`, lower -> upper),
    x along the hip line (`layout.hips`, right -> left) made orthogonal to y, z = x cross y. A proper
    rotation (no reflection), so left stays left.
    """
    up = pose[layout.spine[1]] - pose[layout.spine[0]]
    across = pose[layout.hips[0]] - pose[layout.hips[1]]
    if not (np.isfinite(up).all() and np.isfinite(across).all()):
        return None
    norm_up = np.linalg.norm(up)
    if norm_up < 1e-6:
        return None
    y = up / norm_up
    across = across - (across @ y) * y
    norm_across = np.linalg.norm(across)
    if norm_across < 1e-6 * max(norm_up, 1.0):
        return None
    x = across / norm_across
    return np.stack([x, y, np.cross(x, y)])


def normalise_view(joints: np.ndarray, layout: Layout) -> np.ndarray:
    """Rotate the clip so the first body's reference pose faces the canonical view.

    The reference pose is the first body at its first present frame (the frame `centre_clip` centres
    on): its spine becomes the y axis and its hip line the x axis, as the NTU pre-normalisation of the
    widely used skeleton toolkits does (they align the spine with an axis and the hip or shoulder line
    with x). Every frame and body gets the same rotation, so motion and the relative placement of two
    people are kept; cross-view retrieval no longer depends on where the camera stood. A clip whose
    reference pose is degenerate (no body, zero-length spine, hips along the spine) is returned as is.
    """
    frame = _reference_frame(joints, layout)
    rotation = None if frame is None else view_rotation(joints[frame, 0].astype(np.float64), layout)
    if rotation is None:
        return joints.copy()
    return (joints.astype(np.float64) @ rotation.T).astype(np.float32)


def pingpong_pad(joints: np.ndarray, min_frames: int) -> np.ndarray:
    """Append time-reversed copies (x, x[::-1], x, ...) until the clip has at least `min_frames` frames.

    Clips already long enough come back unchanged; the padded result has exactly `min_frames` frames.
    """
    t = joints.shape[0]
    if t == 0:
        raise ValueError("pingpong_pad: empty clip")
    if t >= min_frames:
        return joints
    k = np.arange(min_frames)
    period, phase = divmod(k, t)
    index = np.where(period % 2 == 0, phase, t - 1 - phase)
    return joints[index]


def resample_positions(start: float, extent: float, frames: int) -> np.ndarray:
    """`frames` evenly spaced frame-index positions from `start` to `start + extent` (both included)."""
    return start + extent * np.linspace(0.0, 1.0, frames)


def interpolate_frames(joints: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of the clip (axis 0) at fractional frame positions (clamped to the clip)."""
    t = joints.shape[0]
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0.0, t - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (pos - lo).reshape(-1, *([1] * (joints.ndim - 1)))
    a, b = joints[lo], joints[hi]
    # where a position falls exactly on a frame, that frame alone (an absent neighbour must not leak NaN)
    return np.where(w == 0, a, (1.0 - w) * a + w * b).astype(np.float32)


def resample(joints: np.ndarray, frames: int) -> np.ndarray:
    """The whole clip resampled to `frames` frames (deterministic, the test-time temporal transform)."""
    return interpolate_frames(joints, resample_positions(0.0, joints.shape[0] - 1, frames))


def random_crop_resample(
    joints: np.ndarray, frames: int, ratio_range: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """A random crop covering a fraction U[ratio_range] of the clip's span, resampled to `frames`."""
    span = joints.shape[0] - 1
    extent = rng.uniform(*ratio_range) * span
    start = rng.uniform(0.0, span - extent)
    return interpolate_frames(joints, resample_positions(start, extent, frames))


def prepare_clip(
    joints: np.ndarray, layout: Layout, max_bodies: int = 2, normalise: bool = True
) -> np.ndarray:
    """Stored `(T, M, J, 3)` -> cleaned `(T', max_bodies, J, 3)`: chosen bodies, valid frames, centred
    and, with `normalise`, rotated to the canonical view (`normalise_view`).

    Raises ValueError when no frame holds a valid body.
    """
    if joints.ndim != 4 or joints.shape[2:] != (layout.num_joints, 3):
        raise ValueError(f"expected (frames, bodies, {layout.num_joints}, 3) joints, got {joints.shape}")
    # choose first: frames where only an unchosen body is present must go too
    valid = drop_invalid_frames(select_bodies(joints, max_bodies))
    if valid.shape[0] == 0:
        raise ValueError("clip has no frame with a valid body")
    centred = centre_clip(valid, layout)
    return normalise_view(centred, layout) if normalise else centred


def to_channels_first(joints: np.ndarray) -> np.ndarray:
    """`(..., T, J, 3)` -> `(..., 3, T, J)` with NaN (absent) set to 0."""
    moved = np.moveaxis(np.nan_to_num(joints, nan=0.0), -1, -3)
    return np.ascontiguousarray(moved, dtype=np.float32)


def training_clip(clean: np.ndarray, rng: np.random.Generator, min_frames: int = 0) -> np.ndarray:
    """One person of a prepared clip as a pretraining tensor `(3, T, J)`.

    The person is drawn uniformly among the bodies present; only the frames where it is present are
    kept. With `min_frames` > 0 a shorter clip is ping-pong padded to that length (the paper pads to
    150 frames); with 0 (the default) it is left as it is and crops resample it instead, as the
    test-time input does: padding appends time-reversed motion, and NW-UCLA, where 83% of the clips
    are shorter than 64 frames, has actions that are each other's reversal (sit down / stand up).
    """
    present = body_presence(clean)
    bodies = np.flatnonzero(present.any(axis=0))
    body = bodies[rng.integers(len(bodies))]
    person = clean[present[:, body], body]  # (T_b, J, 3)
    return to_channels_first(pingpong_pad(person, min_frames) if min_frames else person)


def eval_clip(clean: np.ndarray, frames: int = 64) -> np.ndarray:
    """The deterministic test-time input `(M, 3, frames, J)`: whole clip resampled, absent persons zero.

    A person absent at either neighbour of an interpolated frame is absent (zero) in that frame.
    """
    return to_channels_first(np.moveaxis(resample(clean, frames), 1, 0))
