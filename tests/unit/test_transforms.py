"""Clip preprocessing (slim.data.transforms) on real NW-UCLA and NTU clips and on synthetic edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from slim.data import transforms as T
from slim.layouts import get_layout

UCLA = get_layout("ucla20")
NTU = get_layout("ntu25")


@pytest.fixture(scope="module")
def ntu_two_body(ntu_raw_dir):
    from slim.data.readers.ntu import read_ntu_file

    return read_ntu_file(ntu_raw_dir / "S001C001P001R001A050.skeleton").joints


def ramp(frames: int, joints: int = 20) -> np.ndarray:
    """(frames, 1, joints, 3) clip whose every value is its frame index."""
    return np.broadcast_to(
        np.arange(frames, dtype=np.float32)[:, None, None, None], (frames, 1, joints, 3)
    ).copy()


def test_pingpong_pad_appends_time_reversed_copies():
    x = ramp(5)
    padded = T.pingpong_pad(x, 23)
    assert padded.shape == (23, 1, 20, 3)
    frames = padded[:, 0, 0, 0]
    np.testing.assert_array_equal(frames[:5], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(frames[5:10], [4, 3, 2, 1, 0])
    np.testing.assert_array_equal(frames[10:15], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(frames[15:], [4, 3, 2, 1, 0, 0, 1, 2])
    assert T.pingpong_pad(x, 5) is x
    np.testing.assert_array_equal(T.pingpong_pad(ramp(1), 4)[:, 0, 0, 0], [0, 0, 0, 0])


def test_drop_invalid_frames(ucla_sequences):
    joints = ucla_sequences[0].joints
    bad = joints.copy()
    bad[3] = 0.0  # Kinect's "no body"
    bad[7] = np.nan
    bad[9, 0, 5, 1] = np.nan  # one missing coordinate makes the body (here the frame) invalid
    kept = T.drop_invalid_frames(bad)
    assert kept.shape[0] == joints.shape[0] - 3
    np.testing.assert_array_equal(kept, np.delete(joints, [3, 7, 9], axis=0))
    assert T.body_presence(kept).all()


def test_centre_puts_first_body_centre_joint_of_frame_zero_at_origin(ucla_sequences):
    for seq in ucla_sequences:
        clean = T.prepare_clip(seq.joints, UCLA, normalise=False)
        np.testing.assert_allclose(clean[0, 0, UCLA.centre], 0.0, atol=1e-6)
        offset = seq.joints[0, 0] - clean[0, 0]
        np.testing.assert_allclose(
            offset, np.broadcast_to(seq.joints[0, 0, UCLA.centre], offset.shape), atol=1e-5
        )
        assert np.isnan(clean[:, 1]).all()  # the single NW-UCLA body; the second slot is absent


def test_centre_uses_first_present_frame_of_first_body():
    x = np.stack([ramp(6)[:, 0] + 1.0, ramp(6)[:, 0] * 2.0], axis=1)  # (6, 2, 20, 3)
    x[:2, 0] = np.nan  # the first body appears at frame 2 (value 3)
    centred = T.centre_clip(x, UCLA)
    np.testing.assert_allclose(centred[2, 0], 0.0)
    np.testing.assert_allclose(centred[0, 1], -3.0)
    assert np.isnan(centred[:2, 0]).all()


def test_body_selection_by_motion_energy(ucla_sequences):
    moving = ucla_sequences[0].joints[:, 0]  # (T, 20, 3), real motion
    still = np.broadcast_to(moving[:1] + 1.0, moving.shape).copy()
    drifting = still + np.arange(len(moving), dtype=np.float32)[:, None, None] * 0.05  # steady translation
    x = np.stack([still, drifting, moving], axis=1)
    x[: len(moving) // 3, 2] = np.nan  # the moving body appears late
    energy = T.motion_energy(x)
    assert energy[2] > 0 and energy[0] == pytest.approx(0.0) and energy[1] == pytest.approx(0.0, abs=1e-8)
    chosen = T.select_bodies(x, 1)
    assert chosen.shape == (len(moving), 1, 20, 3)
    np.testing.assert_array_equal(chosen[:, 0], x[:, 2])
    assert T.select_bodies(x[:, :1], 2).shape[1] == 2 and np.isnan(T.select_bodies(x[:, :1], 2)[:, 1]).all()
    # frames where only an unchosen body is present leave the prepared clip
    clean = T.prepare_clip(x, UCLA, max_bodies=2)
    assert clean.shape[0] == len(moving) and T.body_presence(clean).any(axis=1).all()
    np.testing.assert_array_equal(np.isnan(clean[:, 0, 0, 0]), np.isnan(x[:, 2, 0, 0]))
    x3 = np.concatenate([x, x[:, :1]], axis=1)
    x3[-4:, :3] = np.nan  # the last 4 frames hold only the fourth, motionless (unchosen) body
    assert T.prepare_clip(x3, UCLA, max_bodies=2).shape[0] == len(moving) - 4


def test_ntu_two_bodies_appearing_and_disappearing(ntu_two_body):
    x = ntu_two_body.copy()
    assert x.shape[1] == 2
    x[:10, 0] = np.nan  # body 0 arrives late, body 1 leaves early, and neither is in frames 30..34
    x[50:, 1] = np.nan
    x[30:35] = np.nan
    energy = T.motion_energy(x)
    clean = T.prepare_clip(x, NTU)
    assert clean.shape == (x.shape[0] - 5, 2, 25, 3)
    first = int(np.argmax(energy))  # the most energetic body takes slot 0 and gives the origin
    np.testing.assert_array_equal(
        np.isnan(clean[:, 0, 0, 0]), np.isnan(np.delete(x[:, first, 0, 0], range(30, 35)))
    )
    origin_frame = int(np.argmax(np.isfinite(clean[:, 0, 0, 0])))
    np.testing.assert_allclose(clean[origin_frame, 0, NTU.centre], 0.0, atol=1e-6)
    rng = np.random.default_rng(0)
    lengths = {T.training_clip(clean, rng, min_frames=8).shape[1] for _ in range(20)}
    assert lengths == {74 - 10 - 5, 50 - 5}  # each body's own frames only, never zero-filled
    ev = T.eval_clip(clean, 64)
    assert ev.shape == (2, 3, 64, 25) and np.isfinite(ev).all()
    assert (ev[1 - first, :, -5:] == 0).all() and (np.abs(ev[first, :, -5:]).sum() > 0)


def test_single_frame_sequence(ucla_dir):
    from slim.data.readers.ucla import read_ucla_file

    seq = read_ucla_file(ucla_dir / "a02_s09_e04_v02.json")
    assert seq.num_frames == 1
    clean = T.prepare_clip(seq.joints, UCLA)
    assert T.training_clip(clean, np.random.default_rng(0)).shape == (3, 1, 20)
    clip = T.training_clip(clean, np.random.default_rng(0), 64)
    assert clip.shape == (3, 64, 20) and np.isfinite(clip).all()
    np.testing.assert_array_equal(clip, np.broadcast_to(clip[:, :1], clip.shape))
    assert T.eval_clip(clean, 64).shape == (2, 3, 64, 20)
    crop = T.random_crop_resample(clean, 16, (0.5, 1.0), np.random.default_rng(0))
    assert crop.shape == (16, 2, 20, 3)


def test_resample_length_and_linear_interpolation():
    x = ramp(11)
    out = T.resample(x, 21)
    assert out.shape == (21, 1, 20, 3)
    np.testing.assert_allclose(out[:, 0, 0, 0], np.linspace(0, 10, 21), atol=1e-6)
    down = T.resample(x, 6)
    np.testing.assert_allclose(down[:, 0, 3, 2], [0, 2, 4, 6, 8, 10], atol=1e-6)


def test_random_crop_covers_ratio_and_is_deterministic():
    x = ramp(101)
    for seed in range(10):
        a = T.random_crop_resample(x, 64, (0.5, 1.0), np.random.default_rng(seed))
        b = T.random_crop_resample(x, 64, (0.5, 1.0), np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        frames = a[:, 0, 0, 0]
        assert 50 - 1e-4 <= frames[-1] - frames[0] <= 100 + 1e-4
        assert frames[0] >= 0 and frames[-1] <= 100
        np.testing.assert_allclose(np.diff(frames), np.diff(frames)[0], atol=1e-4)


def test_training_and_eval_tensors(ucla_sequences):
    for seq in ucla_sequences:
        clean = T.prepare_clip(seq.joints, UCLA)
        a = T.training_clip(clean, np.random.default_rng(3), min_frames=64)
        b = T.training_clip(clean, np.random.default_rng(3), min_frames=64)
        np.testing.assert_array_equal(a, b)
        frames = clean.shape[0]
        assert a.dtype == np.float32 and a.shape == (3, max(64, frames), 20)
        np.testing.assert_array_equal(a[:, :frames], np.moveaxis(clean[:, 0], -1, 0))
        ev = T.eval_clip(clean, 64)
        assert ev.shape == (2, 3, 64, 20) and (ev[1] == 0).all()
        np.testing.assert_allclose(ev[0, :, 0], a[:, 0], atol=1e-6)
        np.testing.assert_allclose(ev[0, :, -1], a[:, frames - 1], atol=1e-6)


def test_prepare_clip_rejects_empty_and_misshaped():
    with pytest.raises(ValueError, match="no frame"):
        T.prepare_clip(np.full((4, 1, 20, 3), np.nan, dtype=np.float32), UCLA)
    with pytest.raises(ValueError, match="25"):
        T.prepare_clip(np.zeros((4, 1, 20, 3), dtype=np.float32), NTU)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_a_rotated_and_moved_clip_normalises_to_the_same_clip(ucla_sequences, ntu_two_body):
    rng = np.random.default_rng(0)
    for joints, layout in [*((s.joints, UCLA) for s in ucla_sequences), (ntu_two_body, NTU)]:
        reference = T.prepare_clip(joints, layout)
        rotation, shift = random_rotation(rng), rng.normal(size=3)
        moved = (joints.astype(np.float64) @ rotation.T + shift).astype(np.float32)
        np.testing.assert_allclose(T.prepare_clip(moved, layout), reference, atol=1e-4)
        # without normalisation the camera's view stays in the clip
        assert not np.allclose(T.prepare_clip(moved, layout, normalise=False), reference, atol=1e-2)


def test_normalised_reference_pose_has_spine_up_and_hips_along_x(ucla_sequences, ntu_two_body):
    for joints, layout in [*((s.joints, UCLA) for s in ucla_sequences), (ntu_two_body, NTU)]:
        pose = T.prepare_clip(joints, layout)[0, 0]
        up = pose[layout.spine[1]] - pose[layout.spine[0]]
        across = pose[layout.hips[0]] - pose[layout.hips[1]]
        np.testing.assert_allclose(up[[0, 2]], 0.0, atol=1e-5)
        assert up[1] > 0
        np.testing.assert_allclose(across[2], 0.0, atol=1e-5)
        assert across[0] > 0
        np.testing.assert_allclose(pose[layout.centre], 0.0, atol=1e-6)


def test_normalisation_keeps_bone_lengths_and_handedness(ucla_sequences):
    joints = ucla_sequences[0].joints
    plain, normalised = T.prepare_clip(joints, UCLA, normalise=False), T.prepare_clip(joints, UCLA)
    bones = np.array(UCLA.bones)
    length = lambda x: np.linalg.norm(x[:, :, bones[:, 0]] - x[:, :, bones[:, 1]], axis=-1)  # noqa: E731
    np.testing.assert_allclose(length(normalised), length(plain), rtol=1e-4, atol=1e-6)
    # a proper rotation: the signed volume of three bones keeps its sign
    volume = lambda x: np.linalg.det(x[0, 0, [4, 8, 3]] - x[0, 0, 2])  # noqa: E731
    assert np.sign(volume(normalised)) == np.sign(volume(plain))


def test_degenerate_reference_pose_is_left_as_it_is():
    x = ramp(6)  # every joint at the same place in each frame: no spine, no hips
    np.testing.assert_array_equal(T.normalise_view(x, UCLA), x)
    assert T.view_rotation(np.zeros((20, 3)), UCLA) is None
    pose = np.zeros((20, 3))
    pose[UCLA.spine[1]] = [0.0, 1.0, 0.0]
    pose[UCLA.hips[0]] = [0.0, 0.5, 0.0]  # hip line along the spine
    assert T.view_rotation(pose, UCLA) is None


def test_training_clip_pads_only_when_asked(ucla_sequences):
    clean = T.prepare_clip(ucla_sequences[0].joints, UCLA)
    rng = np.random.default_rng(0)
    assert T.training_clip(clean, rng).shape[1] == clean.shape[0]
    assert T.training_clip(clean, rng, clean.shape[0] + 30).shape[1] == clean.shape[0] + 30
