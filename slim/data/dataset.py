"""Pretraining batches indexed by optimiser step: every batch is a pure function of (seed, step, rank).

The training split is read from Parquet once and prepared (`prepare_clip`) up front; NW-UCLA's 1,020
training clips take a few MB. Step `s` of a run belongs to epoch `s // steps_per_epoch`, whose sample
order is `default_rng([seed, epoch]).permutation(n)`; the step takes the next `global_batch` rows of
it (the tail that does not fill a batch is dropped), and rank r of W takes the r-th of W equal
shards. Every random draw of a step comes from generators seeded by (seed, step, ...): the person and
crop of each sample from its position in the global batch, the views (and the model's own draws)
from the rank. Nothing carries over from one step to the next, so a resumed run reproduces the
uninterrupted one exactly and the result does not depend on how many loader workers there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from slim.data.schema import read_sequences
from slim.data.transforms import prepare_clip, random_crop_resample, training_clip
from slim.layouts import Layout, get_layout
from slim.views import ViewConfig, Views, collate_clips, make_views

# Stream tags: each kind of draw of a step gets its own generator, so adding one changes no other.
SAMPLE_STREAM, VIEWS_STREAM, MODEL_STREAM = 0, 1, 2


@dataclass(frozen=True)
class TrainingClips:
    """The prepared training clips `(T, M, J, 3)` in sample-id order, with their ids and layout."""

    sample_ids: tuple[str, ...]
    clips: tuple[np.ndarray, ...]
    layout: Layout


def load_training_clips(
    parquet: str | Path, sample_ids: Sequence[str], normalise_view: bool = True
) -> TrainingClips:
    """Read the sequences `sample_ids` from the dataset and prepare them (`prepare_clip`, view-normalised
    unless `normalise_view` is False); every id must be there."""
    parquet = Path(parquet)
    wanted = sorted(set(sample_ids))
    if not wanted:
        raise ValueError(f"{parquet}: no training sample ids given")
    sequences = sorted(read_sequences(parquet, wanted), key=lambda s: s.sample_id)
    missing = sorted(set(wanted) - {s.sample_id for s in sequences})
    if missing:
        raise ValueError(f"{parquet}: {len(missing)} split sample ids are not in the dataset, e.g. {missing[:3]}")
    layouts = {s.layout for s in sequences}
    if len(layouts) != 1:
        raise ValueError(f"{parquet}: the training samples mix layouts {sorted(layouts)}")
    layout = get_layout(layouts.pop())
    clips = []
    for s in sequences:
        try:
            clips.append(prepare_clip(s.joints, layout, normalise=normalise_view))
        except ValueError as exc:
            raise ValueError(f"{parquet}: sample {s.sample_id}: {exc}") from exc
    return TrainingClips(tuple(s.sample_id for s in sequences), tuple(clips), layout)


def step_seed(seed: int, step: int, *stream: int) -> int:
    """A seed for a torch generator, a pure function of (seed, step, *stream)."""
    return int(np.random.SeedSequence([seed, step, *stream]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class BatchPlan:
    """Which dataset rows each step and rank get."""

    num_samples: int
    global_batch: int
    world_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.global_batch % self.world_size:
            raise ValueError(f"batch size {self.global_batch} is not divisible by {self.world_size} processes")
        if not 0 < self.global_batch <= self.num_samples:
            raise ValueError(f"batch size {self.global_batch} must be in [1, {self.num_samples}] (training clips)")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size

    def global_rows(self, step: int) -> np.ndarray:
        """(global_batch,) dataset rows of `step`, in batch order."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return order[k * self.global_batch : (k + 1) * self.global_batch]

    def rank_positions(self, rank: int) -> range:
        """Positions in the global batch that `rank` takes."""
        return range(rank * self.local_batch, (rank + 1) * self.local_batch)


@dataclass
class Batch:
    """One rank's share of one step: dataset rows (B,), and the model input (`Views` for SLiM, a
    `(B, 3, F, J)` clip tensor for MAE)."""

    step: int
    rows: Tensor
    inputs: Views | Tensor

    def _map(self, fn) -> Batch:
        if isinstance(self.inputs, Tensor):
            return replace(self, inputs=fn(self.inputs))
        changes = {}
        for f in fields(self.inputs):
            value = getattr(self.inputs, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = fn(value)
            elif isinstance(value, dict):
                changes[f.name] = {k: fn(v) for k, v in value.items()}
        return replace(self, inputs=replace(self.inputs, **changes))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=True))


class StepBatches(Dataset):
    """Map-style dataset over step indices: `dataset[step]` is this rank's `Batch` of that step.

    method "slim": each sample is `training_clip` (one random person, ping-pong padded to `pad_frames`
    if shorter; 0 = never padded), the batch becomes global and local views (`make_views`). method
    "mae": the same clip, then a random crop of U[0.5, 1] of it resampled to `mae_frames` frames
    (MAMP's only augmentation).
    """

    def __init__(
        self,
        data: TrainingClips,
        method: str,
        plan: BatchPlan,
        rank: int = 0,
        views: ViewConfig | None = None,
        mae_frames: int = 120,
        pad_frames: int = 0,
    ) -> None:
        if method not in ("slim", "mae"):
            raise ValueError(f"unknown pretraining method {method!r}; known: mae, slim")
        if plan.num_samples != len(data.clips):
            raise ValueError(f"batch plan for {plan.num_samples} samples, data has {len(data.clips)}")
        self.data, self.method, self.plan, self.rank = data, method, plan, rank
        self.views = views or ViewConfig()
        self.mae_frames, self.pad_frames = mae_frames, pad_frames

    def _clip(self, row: int, rng: np.random.Generator) -> np.ndarray:
        clip = training_clip(self.data.clips[row], rng, self.pad_frames)  # (3, T, J)
        if self.method == "mae":
            cropped = random_crop_resample(np.moveaxis(clip, 1, 0), self.mae_frames, (0.5, 1.0), rng)
            clip = np.ascontiguousarray(np.moveaxis(cropped, 0, 1))
        return clip

    def __getitem__(self, step: int) -> Batch:
        seed = self.plan.seed
        rows = self.plan.global_rows(step)
        positions = self.plan.rank_positions(self.rank)
        clips = [
            torch.from_numpy(self._clip(int(rows[p]), np.random.default_rng([seed, step, SAMPLE_STREAM, p])))
            for p in positions
        ]
        local_rows = torch.as_tensor(rows[positions.start : positions.stop])
        if self.method == "mae":
            return Batch(step, local_rows, torch.stack(clips))
        padded, lengths = collate_clips(clips)
        generator = torch.Generator().manual_seed(step_seed(seed, step, VIEWS_STREAM, self.rank))
        return Batch(step, local_rows, make_views(padded, lengths, self.data.layout, self.views, generator))


def step_loader(
    dataset: StepBatches, start_step: int, total_steps: int, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Batches of steps `start_step .. total_steps - 1`, in step order whatever the number of workers."""
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=range(start_step, total_steps),
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
    )
