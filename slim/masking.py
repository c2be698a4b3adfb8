"""Token masks for clips of `Tp` temporal patches x `J` joints: semantic tubes, random tokens, the view policy.

A mask is bool `(B, Tp, J)`, True = hidden from the student. Each sample has its own target ratio;
the number of masked tokens is exactly `round(ratio * Tp * J)`.

Semantic tube masking: a tube is a run of joints that are contiguous in one body-part group's order
(`layout.groups`) held over a run of consecutive temporal patches, so a hidden joint cannot be read off
its neighbours along the limb or in time. Tubes are drawn (the group with probability proportional to
its size, a run length U{1..|group|} at a uniform offset, a temporal run U{ceil(min_time * Tp)..Tp} at
a uniform offset) and may overlap; they are taken in draw order until the target count is reached, and
the last one is trimmed to hit the count exactly: its latest tokens in (time, group order) go first,
so what remains of it is whole earlier rows plus a contiguous prefix of one row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch
from torch import Tensor

from slim.layouts import Layout

_UNCOVERED = 1 << 40  # first-tube index of a token no tube covers; sorts after every real tube
_MAX_CHUNK = 48  # tubes per draw: first_cover's float64 bit trick is exact up to 52


@dataclass(frozen=True)
class Tubes:
    """Tube parameters, each (B, N) long: body-part group index, run along the group, run in time."""

    group: Tensor
    joint_start: Tensor
    joint_length: Tensor
    time_start: Tensor
    time_length: Tensor


@dataclass(frozen=True)
class MaskPolicy:
    """Which views of a batch are masked and how much.

    A fraction `probability` of the views is masked; their ratios are spread over `ratio_range` by
    stratified sampling (one uniform draw in each of equal sub-intervals) and shuffled across the views;
    the other views get ratio 0 (no mask).
    """

    probability: float = 0.5
    ratio_range: tuple[float, float] = (0.5, 0.9)
    kind: Literal["tube", "random"] = "tube"
    min_time: float = 0.25  # shortest tube, as a fraction of the temporal patches

    def __post_init__(self) -> None:
        lo, hi = self.ratio_range
        if (
            self.kind not in ("tube", "random")
            or not 0.0 <= lo <= hi <= 1.0
            or not 0.0 <= self.probability <= 1.0
        ):
            raise ValueError(
                f"MaskPolicy: kind must be 'tube' or 'random' and probability, ratio_range within [0, 1], "
                f"got {self.kind!r}, {self.probability}, {self.ratio_range}"
            )


def _group_tables(layout: Layout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _group_tables_cached(tuple(layout.groups.values()), layout.num_joints)


@cache
def _group_tables_cached(
    groups: tuple[tuple[int, ...], ...], num_joints: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(J,) group index and position inside the group, (G,) group sizes, (J,) rank in the group order."""
    group_id = torch.empty(num_joints, dtype=torch.long)
    position = torch.empty(num_joints, dtype=torch.long)
    for g, joints in enumerate(groups):
        for i, j in enumerate(joints):
            group_id[j], position[j] = g, i
    rank = torch.empty(num_joints, dtype=torch.long)
    rank[torch.tensor([j for joints in groups for j in joints])] = torch.arange(num_joints)
    sizes = torch.tensor([len(joints) for joints in groups])
    return group_id, position, sizes, rank


def _uniform_int(low: Tensor, high: Tensor, generator: torch.Generator) -> Tensor:
    """Integers uniform in [low, high] (inclusive, elementwise)."""
    u = torch.rand(low.shape, generator=generator)
    return low + (u * (high - low + 1)).long().clamp_max(high - low)


def draw_tubes(
    batch: int,
    count: int,
    temporal_patches: int,
    layout: Layout,
    generator: torch.Generator,
    min_time: float = 0.25,
) -> Tubes:
    """`count` random tubes per sample (see the module docstring for their distribution)."""
    group_id, _, sizes, _ = _group_tables(layout)
    shape = (batch, count)
    group = group_id[torch.randint(0, layout.num_joints, shape, generator=generator)]
    size = sizes[group]
    joint_length = _uniform_int(torch.ones(shape, dtype=torch.long), size, generator)
    joint_start = _uniform_int(torch.zeros(shape, dtype=torch.long), size - joint_length, generator)
    t_min = torch.full(shape, max(1, math.ceil(min_time * temporal_patches)))
    time_length = _uniform_int(
        t_min.clamp_max(temporal_patches), torch.full(shape, temporal_patches), generator
    )
    time_start = _uniform_int(torch.zeros(shape, dtype=torch.long), temporal_patches - time_length, generator)
    return Tubes(group, joint_start, joint_length, time_start, time_length)


def tube_extents(tubes: Tubes, temporal_patches: int, layout: Layout) -> tuple[Tensor, Tensor]:
    """(B, N, Tp) and (B, N, J) bool: the temporal patches and the joints each tube spans."""
    group_id, position, _, _ = _group_tables(layout)
    g, js, jl = tubes.group[..., None], tubes.joint_start[..., None], tubes.joint_length[..., None]
    joints = (group_id == g) & (position >= js) & (position < js + jl)
    t = torch.arange(temporal_patches)
    ts, tl = tubes.time_start[..., None], tubes.time_length[..., None]
    return (t >= ts) & (t < ts + tl), joints


def tube_coverage(tubes: Tubes, temporal_patches: int, layout: Layout) -> Tensor:
    """(B, N, Tp, J) bool: the tokens each tube covers."""
    times, joints = tube_extents(tubes, temporal_patches, layout)
    return times[..., :, None] & joints[..., None, :]


def first_cover(times: Tensor, joints: Tensor) -> Tensor:
    """(B, Tp, J) long: index of the first tube covering each token, or a huge value if none does.

    Tube n contributes 2^(N-1-n) to a token it covers, summed by one float64 matmul (exact for
    N <= _MAX_CHUNK), so the highest set bit of the sum names the first tube: about 20x faster than
    reducing the (B, N, Tp, J) coverage.
    """
    n = times.shape[1]
    weights = torch.pow(2.0, torch.arange(n - 1, -1, -1, dtype=torch.float64))
    score = torch.bmm(times.transpose(1, 2).double() * weights, joints.double())
    _, exponent = torch.frexp(score)
    return torch.where(score > 0, n - exponent.long(), _UNCOVERED)


def target_counts(ratios: Tensor, tokens: int) -> Tensor:
    """(B,) long: number of tokens to mask, `round(ratio * tokens)` clamped to [0, tokens]."""
    return torch.round(ratios.double() * tokens).long().clamp(0, tokens)


def _mask_smallest(keys: Tensor, counts: Tensor) -> Tensor:
    """(B, L) bool: True at the `counts[b]` smallest keys of each row (exact even with ties)."""
    order = keys.argsort(dim=1)
    take = torch.arange(keys.shape[1]) < counts[:, None]
    return torch.zeros_like(take).scatter_(1, order, take)


def _expected_tube_tokens(temporal_patches: int, layout: Layout, min_time: float) -> float:
    _, _, sizes, _ = _group_tables(layout)
    mean_joints = float((sizes * (sizes + 1) / 2).sum()) / layout.num_joints
    t_min = min(temporal_patches, max(1, math.ceil(min_time * temporal_patches)))
    return mean_joints * (t_min + temporal_patches) / 2


def tube_mask(
    ratios: Tensor, temporal_patches: int, layout: Layout, generator: torch.Generator, min_time: float = 0.25
) -> Tensor:
    """(B, Tp, J) semantic tube mask with exactly `round(ratios[b] * Tp * J)` tokens masked per sample.

    Tubes are drawn in chunks sized for the largest ratio until every sample reaches its count.
    """
    batch, j = ratios.shape[0], layout.num_joints
    tokens = temporal_patches * j
    counts = target_counts(ratios, tokens)
    # enough tubes that the expected coverage of the largest ratio is reached about twice over
    fill = min(float(counts.max()) / tokens, 1.0 - 1.0 / tokens)
    expected = -2.0 * math.log1p(-fill) * tokens / _expected_tube_tokens(temporal_patches, layout, min_time)
    chunk = min(_MAX_CHUNK, max(4, math.ceil(expected)))
    first = torch.full((batch, temporal_patches, j), _UNCOVERED)
    drawn = 0
    while bool(((first < _UNCOVERED).sum(dim=(1, 2)) < counts).any()):
        tubes = draw_tubes(batch, chunk, temporal_patches, layout, generator, min_time)
        first = torch.minimum(first, first_cover(*tube_extents(tubes, temporal_patches, layout)) + drawn)
        drawn += chunk
    within = torch.arange(temporal_patches)[:, None] * j + _group_tables(layout)[3][None, :]  # (Tp, J)
    keys = (first * tokens + within).view(batch, tokens)
    return _mask_smallest(keys, counts).view(batch, temporal_patches, j)


def random_mask(
    ratios: Tensor, temporal_patches: int, layout: Layout, generator: torch.Generator, min_time: float = 0.25
) -> Tensor:
    """(B, Tp, J) uniformly random token mask with exactly `round(ratios[b] * Tp * J)` tokens per sample.

    For ablations; `min_time` is accepted (and ignored) so that it is interchangeable with `tube_mask`.
    """
    batch, tokens = ratios.shape[0], temporal_patches * layout.num_joints
    keys = torch.rand(batch, tokens, generator=generator)
    return _mask_smallest(keys, target_counts(ratios, tokens)).view(
        batch, temporal_patches, layout.num_joints
    )


def draw_mask_ratios(views: int, policy: MaskPolicy, generator: torch.Generator) -> Tensor:
    """(views,) ratios: `round(probability * views)` views spread over `ratio_range`, the rest 0."""
    masked = round(policy.probability * views)
    lo, hi = policy.ratio_range
    edges = torch.linspace(lo, hi, masked + 1)
    spread = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(masked, generator=generator)
    ratios = torch.cat([spread, torch.zeros(views - masked)])
    return ratios[torch.randperm(views, generator=generator)]


def policy_masks(
    views: int, temporal_patches: int, layout: Layout, policy: MaskPolicy, generator: torch.Generator
) -> Tensor:
    """(views, Tp, J) masks for a set of views under `policy`."""
    ratios = draw_mask_ratios(views, policy, generator)
    masker = tube_mask if policy.kind == "tube" else random_mask
    return masker(ratios, temporal_patches, layout, generator, policy.min_time)
