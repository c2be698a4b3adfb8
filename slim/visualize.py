"""Figures of what pretraining does to a real clip, and of how it went.

- `draw_masking`: the skeleton at each temporal patch with the joints a token mask hides (semantic
  tubes for SLiM, random tokens for MAE) highlighted, above the mask itself as a joints x time grid.
- `draw_augmentations`: the clip under each skeletal augmentation (mirror, bone-aware scaling,
  rotation) over the original.
- `draw_loss_curves`: losses, learning rate and throughput per step from slim.train's plots.csv.

Skeletons are drawn in the x-y plane (x right, y up, as the sensors record them). The helpers that
compute what is drawn (`masking_panels`, `bone_segments`, `loss_curve_series`) are separate from
the drawing, and every artist that shows data carries a `gid` naming it, so that tests can check the
figure against the data. matplotlib is imported inside the drawing functions only.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from slim.atomic import atomic_path
from slim.augment import AugmentConfig, bone_scale, mirror, rotate
from slim.data.transforms import eval_clip
from slim.layouts import Layout
from slim.masking import random_mask, tube_mask
from slim.monitor import MONITOR_KEYS

MAX_PANELS = 8  # temporal patches drawn as skeletons; the mask grid always shows all of them
SCHEDULE_COLUMNS = ("lr", "weight_decay", "momentum", "teacher_temp")
NOT_LOSSES = ("step", "grad_norm", "clips_per_s", *SCHEDULE_COLUMNS)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG atomically and free it."""
    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def _check_clip(clip: Tensor, layout: Layout) -> None:
    if clip.ndim != 3 or clip.shape[0] != 3 or clip.shape[2] != layout.num_joints:
        raise ValueError(f"expected a clip (3, T, {layout.num_joints}), got {tuple(clip.shape)}")


def bone_segments(points: np.ndarray, layout: Layout) -> np.ndarray:
    """(bones, 2, 2): the (child, parent) end points of every bone, from joint positions (J, 2)."""
    children, parents = zip(*layout.bones, strict=True)
    return np.stack([points[list(children)], points[list(parents)]], axis=1)


def _draw_skeleton(ax, points: np.ndarray, layout: Layout, gid: str, **style) -> None:
    from matplotlib.collections import LineCollection

    lines = LineCollection(bone_segments(points, layout), **style)
    lines.set_gid(gid)
    ax.add_collection(lines)


def _frame_limits(ax, points: np.ndarray) -> None:
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = 0.1 * float(max(hi - lo)) + 1e-3
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


# ----------------------------------------------------------------------------- masking


@dataclass(frozen=True)
class MaskPanel:
    """One temporal patch as drawn: its middle frame, the joints there (J, 2) and which are hidden."""

    patch: int
    frame: int
    points: np.ndarray
    masked: np.ndarray


def masking_panels(clip: Tensor, mask: Tensor, patch_size: int) -> list[MaskPanel]:
    """A panel per temporal patch of `clip` (3, T, J) under `mask` (T // patch_size, J)."""
    tp = clip.shape[1] // patch_size
    if clip.shape[1] % patch_size or mask.shape != (tp, clip.shape[2]):
        raise ValueError(
            f"mask {tuple(mask.shape)} does not fit a clip {tuple(clip.shape)} with patch size {patch_size}"
        )
    xy = clip[:2].permute(1, 2, 0).numpy()  # (T, J, 2)
    panels = []
    for t in range(tp):
        frame = t * patch_size + patch_size // 2
        panels.append(MaskPanel(t, frame, xy[frame], mask[t].numpy().astype(bool)))
    return panels


def draw_masking(clip: Tensor, mask: Tensor, layout: Layout, patch_size: int, title: str = "Token masking"):
    """Skeletons of up to MAX_PANELS temporal patches (hidden joints red, gid `masked-<patch>`; the
    visible ones black, `visible-<patch>`; bones `bones-<patch>`) above the (J, Tp) mask grid
    (gid `mask-grid`, hidden = 1)."""
    _check_clip(clip, layout)
    plt = _pyplot()
    panels = masking_panels(clip, mask, patch_size)
    shown = sorted({int(i) for i in np.linspace(0, len(panels) - 1, min(len(panels), MAX_PANELS)).round()})
    fig = plt.figure(figsize=(2.0 * len(shown), 6.8))
    grid = fig.add_gridspec(2, len(shown), height_ratios=(1.3, 1.0))
    every = np.concatenate([p.points for p in panels])
    for column, index in enumerate(shown):
        panel = panels[index]
        ax = fig.add_subplot(grid[0, column])
        _draw_skeleton(ax, panel.points, layout, f"bones-{panel.patch}", colors="0.55", linewidths=1.2)
        visible = ax.scatter(*panel.points[~panel.masked].T, s=12, color="black", zorder=3)
        hidden = ax.scatter(*panel.points[panel.masked].T, s=36, color="tab:red", marker="o", zorder=4)
        visible.set_gid(f"visible-{panel.patch}")
        hidden.set_gid(f"masked-{panel.patch}")
        _frame_limits(ax, every)
        ax.set_title(
            f"patch {panel.patch} (frame {panel.frame})\n{int(panel.masked.sum())} hidden", fontsize=8
        )
    ax = fig.add_subplot(grid[1, :])
    image = ax.imshow(
        mask.numpy().T.astype(float), aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest"
    )
    image.set_gid("mask-grid")
    ax.set_yticks(range(layout.num_joints), labels=layout.joint_names, fontsize=6)
    ax.set_xticks(range(len(panels)))
    ax.set_xlabel("temporal patch")
    ratio = float(mask.float().mean())
    fig.suptitle(f"{title}: {ratio:.0%} of {mask.numel()} tokens hidden (red)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- augmentations


def augmented_clips(
    clip: Tensor, layout: Layout, generator: torch.Generator, config: AugmentConfig | None = None
) -> dict[str, Tensor]:
    """`clip` (3, T, J) and its image under each skeletal augmentation, each applied for sure (p = 1)
    with `config`'s ranges: original, mirror, bone scaling, rotation."""
    _check_clip(clip, layout)
    config = config or AugmentConfig()
    x = clip[None]
    return {
        "original": clip,
        "mirror": mirror(x, layout, generator, p=1.0)[0],
        "bone scaling": bone_scale(x, layout, generator, p=1.0, scale_range=config.scale_range)[0],
        "rotation": rotate(x, generator, p=1.0, max_angle=config.max_angle)[0],
    }


def draw_augmentations(clips: dict[str, Tensor], layout: Layout, frame: int | None = None, title: str = ""):
    """One panel per entry of `clips` (as `augmented_clips` returns): the skeleton at `frame`
    (default: the middle one; gid `bones-<name>`) over the original's in grey (`reference-<name>`)."""
    plt = _pyplot()
    original = clips["original"]
    frame = original.shape[1] // 2 if frame is None else frame
    points = {name: clip[:2, frame].T.numpy() for name, clip in clips.items()}
    every = np.concatenate(list(points.values()))
    fig, axes = plt.subplots(1, len(clips), figsize=(3.0 * len(clips), 3.6))
    for ax, (name, xy) in zip(np.atleast_1d(axes), points.items(), strict=True):
        if name != "original":
            _draw_skeleton(ax, points["original"], layout, f"reference-{name}", colors="0.8", linewidths=2.5)
        _draw_skeleton(ax, xy, layout, f"bones-{name}", colors="tab:blue", linewidths=1.6)
        ax.scatter(*xy.T, s=10, color="tab:blue", zorder=3)
        _frame_limits(ax, every)
        ax.set_title(name)
    fig.suptitle(title or f"Skeletal augmentations, frame {frame} (grey: original)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- loss curves


def read_plots(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def loss_curve_series(rows: list[dict[str, str]]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{"losses" | "target entropy / ln K" | "learning rate" | "clips/s": {column: (steps, values)}}
    from plots.csv rows; empty cells (a column a run does not have) are left out."""
    if not rows:
        raise ValueError("no plots.csv rows to draw")
    columns = [c for c in rows[0] if c != "step"]
    groups = {
        "losses": [c for c in columns if c not in NOT_LOSSES and c not in MONITOR_KEYS],
        "target entropy / ln K": [c for c in columns if c in MONITOR_KEYS],
        "learning rate": [c for c in columns if c == "lr"],
        "clips/s": [c for c in columns if c == "clips_per_s"],
    }
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for group, names in groups.items():
        for name in names:
            kept = [r for r in rows if r.get(name) not in (None, "")]
            steps = np.array([int(r["step"]) for r in kept], dtype=np.int64)
            series.setdefault(group, {})[name] = (steps, np.array([float(r[name]) for r in kept]))
    return series


def draw_loss_curves(rows: list[dict[str, str]], title: str = "Pretraining"):
    """A panel per group of `loss_curve_series`, a line per column (gid = the column)."""
    plt = _pyplot()
    series = loss_curve_series(rows)
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.4))
    for ax, (group, lines) in zip(np.atleast_1d(axes), series.items(), strict=True):
        for name, (steps, values) in lines.items():
            (line,) = ax.plot(steps, values, label=name, linewidth=1.2)
            line.set_gid(name)
        ax.set_xlabel("step")
        ax.set_title(group)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the pretrain stage's figures


def write_pretrain_figures(
    clip: np.ndarray,
    layout: Layout,
    out_dir: str | Path,
    generator: torch.Generator,
    *,
    frames: int,
    patch_size: int,
    mask_ratio: float,
    mask_kind: str = "tube",
    min_time: float = 0.25,
    augment: AugmentConfig | None = None,
    name: str = "",
) -> list[Path]:
    """`masking.png` (and, given `augment`, `views.png`) in `out_dir` for a prepared clip (T, M, J, 3):
    its first person resampled to `frames` frames, masked at `mask_ratio` (`tube` or `random`)."""
    if mask_kind not in ("tube", "random"):
        raise ValueError(f"mask_kind must be 'tube' or 'random', got {mask_kind!r}")
    x = torch.from_numpy(eval_clip(clip, frames)[0])
    masker = tube_mask if mask_kind == "tube" else random_mask
    mask = masker(torch.tensor([mask_ratio]), frames // patch_size, layout, generator, min_time)[0]
    label = f"{name}: " if name else ""
    out_dir = Path(out_dir)
    what = "Semantic tube masking" if mask_kind == "tube" else "Random token masking"
    paths = [
        save_figure(draw_masking(x, mask, layout, patch_size, f"{label}{what}"), out_dir / "masking.png")
    ]
    if augment is not None:
        fig = draw_augmentations(
            augmented_clips(x, layout, generator, augment),
            layout,
            title=f"{label}skeletal augmentations (grey: original)",
        )
        paths.append(save_figure(fig, out_dir / "views.png"))
    return paths


def write_loss_curves(plots_csv: str | Path, path: str | Path, title: str = "Pretraining") -> Path:
    return save_figure(draw_loss_curves(read_plots(plots_csv), title), path)
