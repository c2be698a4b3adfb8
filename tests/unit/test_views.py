"""Multi-granularity views (slim.views) on real NW-UCLA clips and synthetic clips that encode frame indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slim.augment import AugmentConfig
from slim.data import transforms as T
from slim.layouts import get_layout
from slim.masking import MaskPolicy
from slim.views import ViewConfig, collate_clips, crop_positions, gather_frames, make_views

UCLA = get_layout("ucla20")
NTU = get_layout("ntu25")
NO_AUGMENT = AugmentConfig(mirror_p=0.0, scale_p=0.0, rotate_p=0.0, noise_p=0.0, axis_zero_p=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ucla_clips(ucla_sequences):
    rng = np.random.default_rng(0)
    return [torch.from_numpy(T.training_clip(T.prepare_clip(s.joints, UCLA), rng)) for s in ucla_sequences]


def index_clips(lengths: list[int], joints: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips whose x channel is the frame index, y the sample index and z 0 (padded frames -1)."""
    clips = []
    for b, t in enumerate(lengths):
        c = torch.zeros(3, t, joints)
        c[0] = torch.arange(t, dtype=torch.float32)[:, None]
        c[1] = b
        clips.append(c)
    padded, lens = collate_clips(clips)
    for b, t in enumerate(lengths):
        padded[b, :, t:] = -1.0
    return padded, lens


def check_shapes(views, b: int, j: int) -> None:
    assert views.batch_size == b
    assert views.global_views.shape == (2 * b, 3, 64, j) and views.global_masks.shape == (2 * b, 8, j)
    assert {f: tuple(v.shape) for f, v in views.local_views.items()} == {
        32: (2 * b, 3, 32, j),
        16: (4 * b, 3, 16, j),
        8: (2 * b, 3, 8, j),
    }
    assert {f: tuple(m.shape) for f, m in views.local_masks.items()} == {
        32: (2 * b, 4, j),
        16: (4 * b, 2, j),
        8: (2 * b, 1, j),
    }
    assert views.global_masks.dtype == torch.bool and all(
        m.dtype == torch.bool for m in views.local_masks.values()
    )


def test_views_of_real_ucla_clips(ucla_clips):
    clips, lengths = collate_clips(ucla_clips)
    views = make_views(clips, lengths, UCLA, ViewConfig(), gen())
    b = len(ucla_clips)
    check_shapes(views, b, 20)
    assert torch.isfinite(views.global_views).all()
    ratios = views.global_masks.float().mean(dim=(1, 2))
    assert (ratios == 0).sum() == b  # half of the global views masked, with ratios in [0.5, 0.9]
    assert ratios[ratios > 0].min() >= 0.5 - 1e-6 and ratios.max() <= 0.9 + 1e-6


def test_views_of_ntu_layout_and_single_frame_clip(ntu_raw_dir):
    from slim.data.readers.ntu import read_ntu_file

    rng = np.random.default_rng(0)
    clean = [T.prepare_clip(read_ntu_file(f).joints, NTU) for f in sorted(ntu_raw_dir.glob("*.skeleton"))[:3]]
    clips = [torch.from_numpy(T.training_clip(c, rng, min_frames=0)) for c in clean]
    clips.append(clips[0][:, :1])  # a single-frame clip
    padded, lengths = collate_clips(clips)
    views = make_views(padded, lengths, NTU, ViewConfig(augment=AugmentConfig(noise_p=0.0)), gen())
    check_shapes(views, 4, 25)
    last = views.global_views[[3, 7]]
    torch.testing.assert_close(last, last[:, :, :1].expand_as(last))  # a still frame stays still (no noise)


def test_crops_lie_inside_their_clip_and_locals_inside_their_parent_global():
    lengths = [5, 64, 100, 200, 1, 37]
    clips, lens = index_clips(lengths, 20)
    config = ViewConfig(augment=NO_AUGMENT)
    views = make_views(clips, lens, UCLA, config, gen(3))
    b = len(lengths)
    frames = views.global_views[:, 0, :, 0].view(2, b, 64)  # frame positions of every global view
    torch.testing.assert_close(
        views.global_views[:, 1, 0, 0].view(2, b), torch.arange(b).float().expand(2, b)
    )
    lo, hi = frames.amin(dim=2), frames.amax(dim=2)
    span = (lens - 1).float()
    assert (lo >= 0).all() and (hi <= span).all()
    covered = (hi - lo)[:, span > 0] / span[span > 0]
    assert covered.min() >= 0.5 - 1e-4 and covered.max() <= 1.0 + 1e-4
    step = (frames[..., 1:] - frames[..., :-1]).mean(dim=2)
    for f, n in config.local_counts.items():
        local = views.local_views[f][:, 0, :, 0].view(2, n, b, f)
        torch.testing.assert_close(
            views.local_views[f][:, 1, 0, 0].view(2, n, b), torch.arange(b).float().expand(2, n, b)
        )
        assert (local.amin(dim=3) >= lo[:, None] - 1e-4).all()
        assert (local.amax(dim=3) <= hi[:, None] + 1e-4).all()
        local_step = (local[..., 1:] - local[..., :-1]).mean(dim=3)
        torch.testing.assert_close(local_step, step[:, None].expand_as(local_step), atol=1e-4, rtol=1e-4)


def test_views_are_deterministic_given_the_generator(ucla_clips):
    clips, lengths = collate_clips(ucla_clips[:4])
    a = make_views(clips, lengths, UCLA, ViewConfig(), gen(11))
    b = make_views(clips, lengths, UCLA, ViewConfig(), gen(11))
    c = make_views(clips, lengths, UCLA, ViewConfig(), gen(12))
    assert torch.equal(a.global_views, b.global_views) and torch.equal(a.global_masks, b.global_masks)
    for f in a.local_views:
        assert torch.equal(a.local_views[f], b.local_views[f]) and torch.equal(
            a.local_masks[f], b.local_masks[f]
        )
    assert not torch.equal(a.global_views, c.global_views)


def test_config_controls_locals_and_masking(ucla_clips):
    clips, lengths = collate_clips(ucla_clips[:4])
    config = ViewConfig(
        local_frames=(16, 16, 16),
        global_mask=MaskPolicy(probability=1.0, ratio_range=(0.6, 0.6), kind="random"),
        local_mask=MaskPolicy(probability=0.0),
    )
    views = make_views(clips, lengths, UCLA, config, gen())
    assert set(views.local_views) == {16} and views.local_views[16].shape == (2 * 3 * 4, 3, 16, 20)
    assert (views.global_masks.sum(dim=(1, 2)) == 96).all() and not views.local_masks[16].any()
    for bad in ({"local_frames": (12,)}, {"local_frames": (0,)}, {"global_crop_range": (0.5, 1.5)}):
        with pytest.raises(ValueError, match="ViewConfig"):
            ViewConfig(**bad)
    with pytest.raises(ValueError, match="lengths"):
        make_views(clips, lengths + 1000, UCLA, config, gen())


def test_batched_resampling_matches_the_numpy_transform(ucla_clips):
    clips, lengths = collate_clips(ucla_clips)
    global_pos, local_pos = crop_positions(lengths, ViewConfig(), gen())
    for positions, crops in zip(
        [global_pos, *local_pos.values()],
        gather_frames(clips, lengths, [global_pos, *local_pos.values()]),
        strict=True,
    ):
        v, b, f = positions.shape
        for row in range(v * b):
            sample = row % b
            clip = clips[sample, :, : lengths[sample]].permute(1, 0, 2).numpy()  # (T, 3, J)
            expected = T.interpolate_frames(clip, positions[row // b, sample].numpy())
            np.testing.assert_allclose(crops[row].permute(1, 0, 2).numpy(), expected, atol=1e-5)
