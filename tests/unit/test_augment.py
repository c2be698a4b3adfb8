"""Skeletal-aware augmentations (slim.augment) on real NW-UCLA clips and an NTU-layout clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slim import augment as A
from slim.data import transforms as T
from slim.layouts import get_layout

UCLA = get_layout("ucla20")
NTU = get_layout("ntu25")


@pytest.fixture(scope="module")
def ucla_batch(ucla_sequences):
    """(12, 3, 32, 20) real clips: each sequence centred and resampled to 32 frames."""
    clips = [T.eval_clip(T.prepare_clip(s.joints, UCLA), 32)[0] for s in ucla_sequences]
    return torch.from_numpy(np.stack(clips))


@pytest.fixture(scope="module")
def ntu_batch(ntu_raw_dir):
    from slim.data.readers.ntu import read_ntu_file

    joints = read_ntu_file(ntu_raw_dir / "S001C001P001R001A050.skeleton").joints
    return torch.from_numpy(T.eval_clip(T.prepare_clip(joints, NTU), 32))  # (2, 3, 32, 25): both persons


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bones_of(x: torch.Tensor, layout) -> torch.Tensor:
    """(B, 3, T, bones) child - parent vectors in `layout.bones` order."""
    child, parent = zip(*layout.bones, strict=True)
    return x[..., list(child)] - x[..., list(parent)]


@pytest.fixture(params=["ucla", "ntu"])
def case(request, ucla_batch, ntu_batch):
    return (ucla_batch, UCLA) if request.param == "ucla" else (ntu_batch, NTU)


def test_mirror_twice_is_identity(case):
    x, layout = case
    once = A.mirror(x, layout, gen(), p=1.0)
    assert not torch.allclose(once, x)
    torch.testing.assert_close(A.mirror(once, layout, gen(), p=1.0), x)


def test_mirror_swaps_left_and_right_and_negates_x(case):
    x, layout = case
    out = A.mirror(x, layout, gen(), p=1.0)
    names = layout.joint_names
    sign = torch.tensor([-1.0, 1.0, 1.0])[None, :, None]
    for left, right in [
        ("left_hand", "right_hand"),
        ("left_foot", "right_foot"),
        ("left_elbow", "right_elbow"),
    ]:
        li, ri = names.index(left), names.index(right)
        torch.testing.assert_close(out[..., ri], x[..., li] * sign)
        torch.testing.assert_close(out[..., li], x[..., ri] * sign)
    torch.testing.assert_close(out[..., names.index("head")], x[..., names.index("head")] * sign)


def test_probability_zero_is_identity_and_half_applies_to_about_half(ucla_batch):
    x = ucla_batch
    torch.testing.assert_close(A.mirror(x, UCLA, gen(), p=0.0), x)
    torch.testing.assert_close(A.bone_scale(x, UCLA, gen(), p=0.0), x)
    torch.testing.assert_close(A.rotate(x, gen(), p=0.0), x)
    big = x.repeat(40, 1, 1, 1)  # 480 samples
    changed = (A.rotate(big, gen(1), p=0.5) - big).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert 0.4 < changed.float().mean() < 0.6


def test_bone_scaling_keeps_directions_and_scales_lengths_in_range(case):
    x, layout = case
    x = x.repeat(8, 1, 1, 1)
    out = A.bone_scale(x, layout, gen(), p=1.0)
    before, after = bones_of(x, layout), bones_of(out, layout)
    cos = torch.nn.functional.cosine_similarity(before, after, dim=1)
    assert cos.min() > 1 - 1e-4
    ratio = after.norm(dim=1) / before.norm(dim=1)  # (B, T, bones)
    assert ratio.min() >= 0.85 - 1e-4 and ratio.max() <= 1.15 + 1e-4
    # one factor per bone for the whole clip: the skeleton is rebuilt, not jittered per frame
    assert (ratio.amax(dim=1) - ratio.amin(dim=1)).max() < 1e-3
    torch.testing.assert_close(out[..., layout.root], x[..., layout.root])
    # left and right limbs share their category's factor; torso, arms and legs differ
    factor = ratio.mean(dim=1)
    bone_of = {child: k for k, (child, _) in enumerate(layout.bones)}
    names = layout.joint_names
    pairs = [("left_elbow", "right_elbow"), ("left_knee", "right_knee"), ("left_wrist", "right_wrist")]
    for left, right in pairs:
        torch.testing.assert_close(
            factor[:, bone_of[names.index(left)]], factor[:, bone_of[names.index(right)]]
        )
    arm, leg = factor[:, bone_of[names.index("left_elbow")]], factor[:, bone_of[names.index("left_knee")]]
    assert (arm - leg).abs().max() > 0.01


def test_rotation_preserves_bone_lengths(case):
    x, layout = case
    out = A.rotate(x, gen(), p=1.0, max_angle=0.3)
    assert not torch.allclose(out, x)
    torch.testing.assert_close(bones_of(out, layout).norm(dim=1), bones_of(x, layout).norm(dim=1))


def test_rotation_matrices_are_rotations_within_angle():
    angles = (torch.rand(64, 3, generator=gen()) * 2 - 1) * 0.3
    r = A.rotation_matrices(angles)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(64, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(64))
    single = A.rotation_matrices(torch.tensor([[0.0, 0.0, 0.25]]))[0]  # about z: x -> (cos, sin, 0)
    torch.testing.assert_close(
        single[:, 0], torch.tensor([np.cos(0.25), np.sin(0.25), 0.0], dtype=torch.float32)
    )
    drawn = A.draw_angles(torch.ones(1000, dtype=torch.bool), 0.3, gen())
    assert drawn.abs().max() <= 0.3 and drawn.abs().max() > 0.29


def test_augment_keeps_skeleton_connected(case):
    """Geometric augmentations only: every bone keeps one length ratio over the whole clip."""
    x, layout = case
    x = x.repeat(8, 1, 1, 1)
    config = A.AugmentConfig(mirror_p=0.0, scale_p=1.0, rotate_p=1.0, noise_p=0.0, axis_zero_p=0.0)
    out = A.Augment(layout, config)(x, gen())
    ratio = bones_of(out, layout).norm(dim=1) / bones_of(x, layout).norm(dim=1)
    assert (ratio.amax(dim=1) - ratio.amin(dim=1)).max() < 1e-3
    assert ratio.min() >= 0.85 - 1e-4 and ratio.max() <= 1.15 + 1e-4


def test_fused_matrices_equal_sequential_application(ucla_batch):
    x = ucla_batch
    apply = torch.ones(len(x), dtype=torch.bool)
    m_channel, m_joint = A.mirror_matrices(UCLA, apply)
    scale = A.bone_scale_matrix(UCLA, A.draw_bone_scales(UCLA, apply, (0.85, 1.15), gen()))
    rotation = A.rotation_matrices(A.draw_angles(apply, 0.3, gen()))
    eye = torch.eye(3).expand(len(x), 3, 3)
    step = A.apply_linear(x, m_channel, m_joint)
    step = A.apply_linear(step, eye, scale)
    step = A.apply_linear(step, rotation, torch.eye(20).expand(len(x), 20, 20))
    torch.testing.assert_close(A.apply_linear(x, rotation @ m_channel, m_joint @ scale), step)


def test_noise_and_axis_zeroing():
    x = torch.zeros(400, 3, 16, 20)
    noisy = A.gaussian_noise(x, gen(), p=1.0, std=0.01)
    assert abs(noisy.std().item() - 0.01) < 5e-4
    ones = torch.ones(200, 3, 8, 20)
    zeroed = A.axis_zeroing(ones, gen(), p=1.0)
    zero_axes = (zeroed == 0).all(dim=(2, 3))  # (B, 3)
    assert (zero_axes.sum(dim=1) == 1).all() and zero_axes.any(dim=0).all()
    assert (A.axis_zeroing(ones, gen(), p=0.0) == 1).all()


def test_augment_is_deterministic_given_the_generator(case):
    x, layout = case
    augment = A.Augment(layout)
    torch.testing.assert_close(augment(x, gen(7)), augment(x, gen(7)))
    assert not torch.allclose(augment(x, gen(7)), augment(x, gen(8)))


def test_rotation_ranges_are_per_axis():
    """A yaw-heavy range (about y, the vertical axis of a view-normalised clip) draws each axis within
    its own limit; one number is the paper's shared limit."""
    g = torch.Generator().manual_seed(0)
    apply = torch.ones(4000, dtype=torch.bool)
    angles = A.draw_angles(apply, (0.1, 0.5, 0.2), g)
    limits = torch.tensor([0.1, 0.5, 0.2])
    assert (angles.abs() <= limits).all() and (angles.abs().amax(0) > 0.9 * limits).all()
    shared = A.draw_angles(apply, 0.3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(shared, A.draw_angles(apply, (0.3, 0.3, 0.3), torch.Generator().manual_seed(0)))
