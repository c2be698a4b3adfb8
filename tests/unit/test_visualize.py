"""The pretraining figures draw the data they claim to: the hidden joints of a tube mask, each
augmentation's skeleton, the loss columns of plots.csv (checked on the figures' artists, on real
NW-UCLA clips)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slim.augment import AugmentConfig
from slim.data.transforms import eval_clip, prepare_clip
from slim.layouts import get_layout
from slim.masking import tube_mask
from slim.visualize import (
    augmented_clips,
    bone_segments,
    draw_augmentations,
    draw_loss_curves,
    draw_masking,
    loss_curve_series,
    masking_panels,
    write_pretrain_figures,
)

LAYOUT = get_layout("ucla20")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def prepared(ucla_sequences) -> np.ndarray:
    return prepare_clip(ucla_sequences[0].joints, LAYOUT)


@pytest.fixture(scope="module")
def clip(prepared) -> torch.Tensor:
    """A real clip's first person, (3, 64, 20)."""
    return torch.from_numpy(eval_clip(prepared, 64)[0])


def artist(fig, gid: str):
    (found,) = fig.findobj(lambda a: a.get_gid() == gid)
    return found


def bone_lengths(clip: torch.Tensor) -> torch.Tensor:
    children, parents = zip(*LAYOUT.bones, strict=True)
    return (clip[:, :, list(children)] - clip[:, :, list(parents)]).norm(dim=0)  # (T, bones)


def test_masked_joints_drawn_are_the_masks_true_entries(clip):
    mask = tube_mask(torch.tensor([0.7]), 8, LAYOUT, torch.Generator().manual_seed(3))[0]
    fig = draw_masking(clip, mask, LAYOUT, patch_size=8)
    panels = masking_panels(clip, mask, 8)
    assert [p.frame for p in panels] == [4, 12, 20, 28, 36, 44, 52, 60]
    drawn = 0
    for panel in panels:
        assert np.array_equal(panel.masked, mask[panel.patch].numpy())
        assert np.array_equal(panel.points, clip[:2, panel.frame].T.numpy())
        hidden = artist(fig, f"masked-{panel.patch}").get_offsets()
        visible = artist(fig, f"visible-{panel.patch}").get_offsets()
        np.testing.assert_allclose(hidden, panel.points[mask[panel.patch].numpy()])
        np.testing.assert_allclose(visible, panel.points[~mask[panel.patch].numpy()])
        drawn += len(hidden)
    assert drawn == int(mask.sum()) == round(0.7 * 8 * 20)
    assert np.array_equal(artist(fig, "mask-grid").get_array(), mask.numpy().T.astype(float))


def test_mask_that_does_not_fit_the_clip_is_a_clear_error(clip):
    with pytest.raises(ValueError, match="does not fit"):
        masking_panels(clip, torch.zeros(4, 20, dtype=torch.bool), 8)


def test_each_augmentation_is_drawn_as_computed(clip):
    config = AugmentConfig()
    clips = augmented_clips(clip, LAYOUT, torch.Generator().manual_seed(0), config)
    assert list(clips) == ["original", "mirror", "bone scaling", "rotation"]
    # mirror: x negated and left/right joints swapped, exactly
    expected = clip.clone()
    expected[0] = -expected[0]
    expected = expected[:, :, list(LAYOUT.mirror_permutation)]
    assert torch.allclose(clips["mirror"], expected)
    # bone scaling: every bone within the range, left and right limbs scaled alike
    ratio = bone_lengths(clips["bone scaling"]) / bone_lengths(clip)
    lo, hi = config.scale_range
    assert bool(((ratio > lo - 1e-4) & (ratio < hi + 1e-4)).all())
    bone_of = {child: i for i, (child, _) in enumerate(LAYOUT.bones)}
    for left, right in LAYOUT.mirror_pairs:
        assert torch.allclose(ratio[:, bone_of[left]], ratio[:, bone_of[right]], atol=1e-4)
    # rotation: a rigid motion that moves the clip
    assert torch.allclose(bone_lengths(clips["rotation"]), bone_lengths(clip), atol=1e-5)
    assert not torch.allclose(clips["rotation"], clip, atol=1e-3)

    fig = draw_augmentations(clips, LAYOUT, frame=30)
    for name, augmented in clips.items():
        drawn = np.array(artist(fig, f"bones-{name}").get_segments())
        np.testing.assert_allclose(drawn, bone_segments(augmented[:2, 30].T.numpy(), LAYOUT), rtol=1e-6)
    reference = np.array(artist(fig, "reference-mirror").get_segments())
    np.testing.assert_allclose(reference, bone_segments(clip[:2, 30].T.numpy(), LAYOUT), rtol=1e-6)


def plots_rows() -> list[dict[str, str]]:
    """plots.csv rows as csv.DictReader gives them (a SLiM run's columns)."""
    rows = []
    for step in range(5):
        rows.append(
            {
                "step": str(step),
                "loss": str(10.0 - step),
                "dino": str(6.0 - step / 2),
                "grad_norm": "1.5",
                "lr": str(step * 1e-4),
                "weight_decay": "0.04",
                "clips_per_s": str(100.0 + step),
            }
        )
    return rows


def test_loss_curves_draw_every_loss_column_and_the_schedule_apart():
    rows = plots_rows()
    series = loss_curve_series(rows)
    assert {g: list(lines) for g, lines in series.items()} == {
        "losses": ["loss", "dino"],
        "learning rate": ["lr"],
        "clips/s": ["clips_per_s"],
    }
    fig = draw_loss_curves(rows)
    for column in ("loss", "dino", "lr", "clips_per_s"):
        line = artist(fig, column)
        np.testing.assert_array_equal(line.get_xdata(), np.arange(5))
        np.testing.assert_allclose(line.get_ydata(), [float(r[column]) for r in rows])
    assert not fig.findobj(lambda a: a.get_gid() in ("grad_norm", "weight_decay"))
    with pytest.raises(ValueError, match="no plots.csv rows"):
        loss_curve_series([])


def test_pretrain_figures_are_written_atomically(prepared, tmp_path):
    paths = write_pretrain_figures(
        prepared,
        LAYOUT,
        tmp_path,
        torch.Generator().manual_seed(0),
        frames=64,
        patch_size=8,
        mask_ratio=0.7,
        augment=AugmentConfig(),
    )
    assert [p.name for p in paths] == ["masking.png", "views.png"]
    mae = write_pretrain_figures(
        prepared,
        LAYOUT,
        tmp_path / "mae",
        torch.Generator(),
        frames=120,
        patch_size=4,
        mask_ratio=0.9,
        mask_kind="random",
    )
    assert [p.name for p in mae] == ["masking.png"]
    for path in (*paths, *mae):
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="mask_kind"):
        write_pretrain_figures(
            prepared,
            LAYOUT,
            tmp_path,
            torch.Generator(),
            frames=64,
            patch_size=8,
            mask_ratio=0.5,
            mask_kind="blocks",
        )
