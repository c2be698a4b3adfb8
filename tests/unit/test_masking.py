"""Semantic tube masking, random masking and the view masking policy (slim.masking)."""

from __future__ import annotations

import pytest
import torch

from slim import masking as M
from slim.layouts import get_layout

LAYOUTS = [get_layout("ucla20"), get_layout("ntu25")]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runs(values: list[int]) -> bool:
    """Whether sorted integer values form one contiguous run."""
    return values == list(range(values[0], values[0] + len(values)))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize("temporal_patches", [8, 4, 1])
def test_each_tube_is_one_group_contiguous_in_time_and_along_the_group(layout, temporal_patches):
    tubes = M.draw_tubes(16, 24, temporal_patches, layout, gen())
    cover = M.tube_coverage(tubes, temporal_patches, layout)  # (16, 24, Tp, J)
    groups = list(layout.groups.values())
    for b in range(cover.shape[0]):
        for n in range(cover.shape[1]):
            tube = cover[b, n]
            times = tube.any(dim=1).nonzero().flatten().tolist()
            joints = tube.any(dim=0).nonzero().flatten().tolist()
            assert times and joints and runs(times)
            assert int(tube.sum()) == len(times) * len(joints)  # a full rectangle
            (group,) = [g for g in groups if set(joints) <= set(g)]
            assert runs(sorted(group.index(j) for j in joints))
            if temporal_patches == 8:
                assert len(times) >= 2  # min_time 0.25 of 8 patches


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize("masker", [M.tube_mask, M.random_mask])
def test_mask_ratio_is_hit_exactly(layout, masker):
    ratios = torch.linspace(0.0, 1.0, 41)
    for tp in (8, 4, 2, 1):
        mask = masker(ratios, tp, layout, gen())
        tokens = tp * layout.num_joints
        assert mask.shape == (41, tp, layout.num_joints) and mask.dtype == torch.bool
        torch.testing.assert_close(mask.sum(dim=(1, 2)), torch.round(ratios.double() * tokens).long())
    assert not masker(torch.zeros(3), 8, layout, gen()).any()
    assert masker(torch.ones(3), 8, layout, gen()).all()


def test_first_cover_matches_brute_force():
    layout = LAYOUTS[1]
    tubes = M.draw_tubes(32, M._MAX_CHUNK, 8, layout, gen())
    cover = M.tube_coverage(tubes, 8, layout)
    index = torch.arange(M._MAX_CHUNK).view(1, -1, 1, 1)
    expected = torch.where(cover, index, M._UNCOVERED).amin(dim=1)
    torch.testing.assert_close(M.first_cover(*M.tube_extents(tubes, 8, layout)), expected)


def neighbour_fraction(mask: torch.Tensor, layout) -> tuple[float, float]:
    """Fraction of masked tokens with a masked temporal neighbour, and with a masked neighbour in group order."""
    m = mask.float()
    in_time = torch.zeros_like(m)
    in_time[:, 1:] += m[:, :-1]
    in_time[:, :-1] += m[:, 1:]
    along = torch.zeros_like(m)
    for joints in layout.groups.values():
        for a, b in zip(joints, joints[1:], strict=False):
            along[..., a] += m[..., b]
            along[..., b] += m[..., a]
    masked = m.sum()
    return float(((in_time > 0) * m).sum() / masked), float(((along > 0) * m).sum() / masked)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_tubes_hide_neighbours_that_random_masking_leaves_visible(layout):
    """The reason for tubes: a masked token's neighbours in time and along the limb are masked too."""
    ratios = torch.full((256,), 0.5)
    tube_time, tube_along = neighbour_fraction(M.tube_mask(ratios, 8, layout, gen()), layout)
    rand_time, rand_along = neighbour_fraction(M.random_mask(ratios, 8, layout, gen()), layout)
    assert tube_time > 0.95 and rand_time < 0.85
    assert tube_along > rand_along + 0.1


def test_masks_are_deterministic_given_the_generator():
    layout, ratios = LAYOUTS[1], torch.rand(64, generator=gen(1))
    for masker in (M.tube_mask, M.random_mask):
        assert torch.equal(masker(ratios, 8, layout, gen(5)), masker(ratios, 8, layout, gen(5)))
        assert not torch.equal(masker(ratios, 8, layout, gen(5)), masker(ratios, 8, layout, gen(6)))


def test_policy_masks_half_the_views_with_ratios_spread_over_the_range():
    policy = M.MaskPolicy(probability=0.5, ratio_range=(0.5, 0.9))
    ratios = M.draw_mask_ratios(64, policy, gen())
    masked = ratios[ratios > 0].sort().values
    assert len(masked) == 32 and masked.min() >= 0.5 and masked.max() <= 0.9
    edges = torch.linspace(0.5, 0.9, 33)
    assert ((masked >= edges[:-1]) & (masked <= edges[1:])).all()  # one ratio per stratum
    assert (ratios[:32] > 0).sum() not in (0, 32)  # shuffled across the views

    layout = LAYOUTS[0]
    masks = M.policy_masks(64, 8, layout, policy, gen())
    per_view = masks.float().mean(dim=(1, 2))
    assert (per_view == 0).sum() == 32 and per_view[per_view > 0].min() >= 0.5 - 1 / 160
    local = M.policy_masks(40, 2, layout, M.MaskPolicy(0.25, (0.3, 0.6), kind="random"), gen())
    assert (local.float().mean(dim=(1, 2)) > 0).sum() == 10


def test_policy_rejects_bad_settings():
    for bad in ({"kind": "tubes"}, {"ratio_range": (0.9, 0.5)}, {"probability": 1.5}):
        with pytest.raises(ValueError, match="MaskPolicy"):
            M.MaskPolicy(**bad)
