"""Training schedules as arrays precomputed per optimiser step: resuming restores one integer.

Defaults follow the paper (150 epochs): lr warm-up over the first 20/150 of training then cosine to
1e-6, weight decay cosine 0.04 -> 0.2, teacher momentum cosine 0.994 -> 1.0, teacher temperature
linear 0.04 -> 0.07 over the first 30/150 then constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 1024) -> float:
    """Square-root batch scaling of the learning rate: base_lr * sqrt(batch_size / reference_batch)."""
    return base_lr * math.sqrt(batch_size / reference_batch)


def cosine_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """`total_steps` values: linear warmup_start -> start over `warmup_steps`, then cosine start -> end.

    The warm-up reaches `start` at step `warmup_steps`; the cosine part ends exactly at `end` on the
    last step.
    """
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"cosine_schedule: need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})"
        )
    warmup = np.linspace(warmup_start, start, warmup_steps, endpoint=False)
    n = total_steps - warmup_steps
    progress = np.arange(n) / max(n - 1, 1)
    cosine = end + 0.5 * (start - end) * (1.0 + np.cos(np.pi * progress))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def linear_warmup_schedule(start: float, end: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """`total_steps` values: linear start -> end over `warmup_steps`, then constant `end`."""
    warmup_steps = min(warmup_steps, total_steps)
    warmup = np.linspace(start, end, warmup_steps, endpoint=False)
    return np.concatenate([warmup, np.full(total_steps - warmup_steps, end)]).astype(np.float64)


@dataclass(frozen=True)
class StepValues:
    """The scheduled values for one optimiser step."""

    lr: float
    last_layer_lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float

    def apply_to(self, optimizer: torch.optim.Optimizer) -> None:
        """Set lr and weight decay on every group, honouring the group keys `SLiM.param_groups` writes:
        `wd_multiplier` (0 for norms, biases, tokens) and `is_last_layer` (prototypes, frozen early)."""
        for group in optimizer.param_groups:
            group["lr"] = self.last_layer_lr if group.get("is_last_layer", False) else self.lr
            group["weight_decay"] = self.weight_decay * group.get("wd_multiplier", 1.0)


@dataclass(frozen=True)
class Schedules:
    """lr, last-layer lr, weight decay, teacher momentum and teacher temperature, one entry per step."""

    lr: np.ndarray
    last_layer_lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    def __post_init__(self) -> None:
        lengths = {
            len(a) for a in (self.lr, self.last_layer_lr, self.weight_decay, self.momentum, self.teacher_temp)
        }
        if len(lengths) != 1:
            raise ValueError(f"Schedules: arrays differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.lr)

    def __getitem__(self, step: int) -> StepValues:
        if not 0 <= step < len(self):
            raise IndexError(f"Schedules: step {step} outside [0, {len(self)})")
        return StepValues(
            lr=float(self.lr[step]),
            last_layer_lr=float(self.last_layer_lr[step]),
            weight_decay=float(self.weight_decay[step]),
            momentum=float(self.momentum[step]),
            teacher_temp=float(self.teacher_temp[step]),
        )

    @classmethod
    def build(
        cls,
        total_steps: int,
        *,
        lr: float = 2e-4,
        final_lr: float = 1e-6,
        lr_warmup_steps: int | None = None,
        weight_decay: tuple[float, float] = (0.04, 0.2),
        momentum: tuple[float, float] = (0.994, 1.0),
        teacher_temp: tuple[float, float] = (0.04, 0.07),
        teacher_temp_warmup_steps: int | None = None,
        freeze_last_layer_steps: int = 0,
    ) -> Schedules:
        """All schedules over `total_steps` optimiser steps.

        `lr` is the peak learning rate (already batch-scaled, see `scaled_lr`). Warm-ups left as None
        take the paper's fractions of training: 20/150 for the lr, 30/150 for the teacher temperature.
        The prototype layer's lr is 0 for the first `freeze_last_layer_steps` (DINO's stabiliser; the
        paper does not say, so off by default).
        """
        if total_steps < 1:
            raise ValueError(f"Schedules.build: total_steps must be >= 1, got {total_steps}")
        if lr_warmup_steps is None:
            lr_warmup_steps = round(total_steps * 20 / 150)
        if teacher_temp_warmup_steps is None:
            teacher_temp_warmup_steps = round(total_steps * 30 / 150)
        lr_arr = cosine_schedule(lr, final_lr, total_steps, lr_warmup_steps)
        last_layer_lr = lr_arr.copy()
        last_layer_lr[:freeze_last_layer_steps] = 0.0
        return cls(
            lr=lr_arr,
            last_layer_lr=last_layer_lr,
            weight_decay=cosine_schedule(*weight_decay, total_steps),
            momentum=cosine_schedule(*momentum, total_steps),
            teacher_temp=linear_warmup_schedule(*teacher_temp, total_steps, teacher_temp_warmup_steps),
        )
