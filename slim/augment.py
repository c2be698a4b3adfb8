"""Skeletal-aware augmentations of clip batches `(B, 3, T, J)`, vectorised over the batch.

Every augmentation is applied to each sample independently with its own probability and draws from an
explicit `torch.Generator`. Mirror, bone-aware scaling and rotation are linear maps of a sample,
`x -> C @ x @ G` with a channel matrix `C (3, 3)` and a joint matrix `G (J, J)`, so `Augment` composes
the three into one pair of batched matmuls instead of three passes over the clip.

Bone-aware scaling draws one factor per sample for each body-part category (torso, arms, legs: a
layout group's name without its side prefix, the bone's category being its child joint's), and left
and right limbs share their category's factor: a person's two arms have the same length, and
independent factors would make lopsided bodies that no recording contains.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from slim.layouts import Layout

SCALE_CATEGORIES = ("trunk", "arm", "leg")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per sample) and parameters of each augmentation, in the order applied."""

    mirror_p: float = 0.5
    scale_p: float = 0.5
    scale_range: tuple[float, float] = (0.85, 1.15)
    rotate_p: float = 0.5
    # radians, per axis (x, y, z), U[-a, a]; the paper: 0.3 for all three. y is the vertical axis of a
    # view-normalised clip, so its range is the yaw: how far the camera may swing around the person.
    max_angle: tuple[float, float, float] = (0.3, 0.3, 0.3)
    noise_p: float = 0.5
    noise_std: float = 0.01  # metres
    axis_zero_p: float = 0.1


def draw_apply(batch: int, p: float, generator: torch.Generator) -> Tensor:
    """(batch,) bool: which samples an augmentation with probability `p` applies to."""
    return torch.rand(batch, generator=generator) < p


def _mirror_joint_matrix(layout: Layout) -> Tensor:
    return _mirror_matrix_cached(layout.mirror_permutation)


@cache
def _mirror_matrix_cached(perm: tuple[int, ...]) -> Tensor:
    """(J, J) permutation P with `(x @ P)[..., perm[j]] = x[..., j]`: joint j moves to its mirror slot."""
    p = torch.zeros(len(perm), len(perm))
    p[torch.arange(len(perm)), torch.tensor(perm)] = 1.0
    return p


def _kinematics(layout: Layout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # Layout holds a dict, so it is not hashable: cache on the tuples the matrices depend on.
    return _kinematics_cached(layout.parents, layout.topological_order, layout.group_of_joint)


@cache
def _kinematics_cached(
    parents: tuple[int, ...], order: tuple[int, ...], parts: tuple[str, ...]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Constant matrices of the bone tree (all (J, J) but the last, acting on the joint axis from the right).

    `bones = x @ D` gives bone vectors child - parent in the child's column (root column 0);
    `ancestors[j, k] = 1` when bone k lies on the path from the root to joint j, so
    `x @ R + (bones * s) @ ancestors.T` rebuilds the joints from the root (R copies the root into
    every column). `category` (J,) is the scale category of each bone, from its child joint's group.
    """
    j = len(parents)
    bones, ancestors, root = torch.zeros(j, j), torch.zeros(j, j), torch.zeros(j, j)
    for joint in order:  # parents before children, so a parent's ancestor row is complete
        parent = parents[joint]
        if parent < 0:
            root[joint] = 1.0
            continue
        bones[joint, joint], bones[parent, joint] = 1.0, -1.0
        ancestors[joint] = ancestors[parent]
        ancestors[joint, joint] = 1.0
    category = torch.tensor([SCALE_CATEGORIES.index(part.split("_")[-1]) for part in parts])
    return bones, ancestors, root, category


def mirror_matrices(layout: Layout, apply: Tensor) -> tuple[Tensor, Tensor]:
    """Channel (B, 3, 3) and joint (B, J, J) matrices: swap left/right joints and negate x where `apply`."""
    sign = torch.ones(apply.shape[0], 3)
    sign[:, 0] = torch.where(apply, -1.0, 1.0)
    eye = torch.eye(layout.num_joints)
    joint = torch.where(apply[:, None, None], _mirror_joint_matrix(layout), eye)
    return torch.diag_embed(sign), joint


def bone_scale_matrix(layout: Layout, scales: Tensor) -> Tensor:
    """(B, J, J) forward-kinematics map that scales bone k (child joint k) by `scales[:, k]` (B, J)."""
    bones, ancestors, root, _ = _kinematics(layout)
    return root + (bones * scales[:, None, :]) @ ancestors.T


def draw_bone_scales(
    layout: Layout, apply: Tensor, scale_range: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """(B, J) per-bone factors: one U[scale_range] per sample and category, 1 where not `apply`."""
    lo, hi = scale_range
    factors = lo + (hi - lo) * torch.rand(apply.shape[0], len(SCALE_CATEGORIES), generator=generator)
    factors = torch.where(apply[:, None], factors, 1.0)
    return factors[:, _kinematics(layout)[3]]


def rotation_matrices(angles: Tensor) -> Tensor:
    """(B, 3, 3) rotations `Rz @ Ry @ Rx` from angles (B, 3) about x, y, z in radians."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1)
    b = angles.shape[0]
    return rz.view(b, 3, 3) @ ry.view(b, 3, 3) @ rx.view(b, 3, 3)


def draw_angles(
    apply: Tensor, max_angle: float | tuple[float, float, float], generator: torch.Generator
) -> Tensor:
    """(B, 3) angles U[-a, a] about x, y, z (`max_angle` one a for all axes, or one per axis); 0 where
    not `apply`."""
    limits = torch.as_tensor(max_angle, dtype=torch.float32).expand(3)
    angles = (2.0 * torch.rand(apply.shape[0], 3, generator=generator) - 1.0) * limits
    return angles * apply[:, None]


def apply_linear(x: Tensor, channel: Tensor, joint: Tensor) -> Tensor:
    """`C @ x @ G` per sample: x (B, 3, T, J), channel (B, 3, 3), joint (B, J, J) -> (B, 3, T, J)."""
    b, c, t, j = x.shape
    y = torch.bmm(x.reshape(b, c * t, j), joint)
    return torch.bmm(channel, y.view(b, c, t * j)).view(b, c, t, j)


def mirror(x: Tensor, layout: Layout, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Left/right mirror (joints permuted by `layout.mirror_permutation`, x negated) with probability p."""
    channel, joint = mirror_matrices(layout, draw_apply(x.shape[0], p, generator))
    return apply_linear(x, channel, joint)


def bone_scale(
    x: Tensor,
    layout: Layout,
    generator: torch.Generator,
    p: float = 0.5,
    scale_range: tuple[float, float] = (0.85, 1.15),
) -> Tensor:
    """Scale torso, arm and leg bones and rebuild the joints from the root, with probability p."""
    scales = draw_bone_scales(layout, draw_apply(x.shape[0], p, generator), scale_range, generator)
    eye = torch.eye(3).expand(x.shape[0], 3, 3)
    return apply_linear(x, eye, bone_scale_matrix(layout, scales))


def rotate(
    x: Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    max_angle: float | tuple[float, float, float] = 0.3,
) -> Tensor:
    """Rotate about the x, y and z axes by angles U[-a, a] (one `max_angle` or one per axis), with
    probability p."""
    rotation = rotation_matrices(draw_angles(draw_apply(x.shape[0], p, generator), max_angle, generator))
    b, c, t, j = x.shape
    return torch.bmm(rotation, x.reshape(b, c, t * j)).view(b, c, t, j)


def _add_noise_(x: Tensor, generator: torch.Generator, p: float, std: float) -> Tensor:
    """In place: noise is drawn for the chosen samples only (half the draws of a full-batch randn)."""
    rows = draw_apply(x.shape[0], p, generator).nonzero().flatten()
    noise = torch.randn((len(rows), *x.shape[1:]), generator=generator, dtype=x.dtype)
    return x.index_add_(0, rows, noise, alpha=std)


def _zero_axis_(x: Tensor, generator: torch.Generator, p: float) -> Tensor:
    """In place: zero one uniformly chosen axis of the chosen samples."""
    rows = draw_apply(x.shape[0], p, generator).nonzero().flatten()
    axes = torch.randint(0, 3, (x.shape[0],), generator=generator)[rows]
    x[rows, axes] = 0.0
    return x


def gaussian_noise(x: Tensor, generator: torch.Generator, p: float = 0.5, std: float = 0.01) -> Tensor:
    """Add N(0, std^2) noise to every coordinate of a sample, with probability p."""
    return _add_noise_(x.clone(), generator, p, std)


def axis_zeroing(x: Tensor, generator: torch.Generator, p: float = 0.1) -> Tensor:
    """Zero one coordinate axis (uniformly chosen) of a sample, with probability p."""
    return _zero_axis_(x.clone(), generator, p)


class Augment:
    """Mirror -> bone-aware scaling -> rotation -> Gaussian noise -> axis zeroing, per sample.

    The three geometric steps are fused into one channel and one joint matrix per sample.
    """

    def __init__(self, layout: Layout, config: AugmentConfig | None = None) -> None:
        self.layout = layout
        self.config = config or AugmentConfig()

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        cfg, b = self.config, x.shape[0]
        mirror_channel, mirror_joint = mirror_matrices(self.layout, draw_apply(b, cfg.mirror_p, generator))
        scales = draw_bone_scales(
            self.layout, draw_apply(b, cfg.scale_p, generator), cfg.scale_range, generator
        )
        rotation = rotation_matrices(
            draw_angles(draw_apply(b, cfg.rotate_p, generator), cfg.max_angle, generator)
        )
        x = apply_linear(x, rotation @ mirror_channel, mirror_joint @ bone_scale_matrix(self.layout, scales))
        x = _add_noise_(x, generator, cfg.noise_p, cfg.noise_std)  # x is a new tensor: safe in place
        return _zero_axis_(x, generator, cfg.axis_zero_p)
