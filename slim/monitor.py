"""Collapse / uniformity monitor for teacher-student training, as DINO users read it.

A teacher whose targets are uniform over the K prototypes (entropy ln K) gives the student nothing to
learn: the loss sits at its floor ln K per term whatever the encoder does. Targets that put every row
on one prototype (entropy 0) are collapse. `entropy_fraction` is the mean row entropy over ln K, so 1
is uniform and 0 collapse; `CollapseMonitor` watches it after warm-up and says when it stays at
either end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

MONITOR_KEYS = ("teacher_cls_entropy", "teacher_patch_entropy", "student_cls_entropy")


@torch.no_grad()
def entropy_fraction(probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of H(row) / ln K for distributions `(..., K)` (rows sum to 1); NaN if no row."""
    k = probs.shape[-1]
    rows = probs.reshape(-1, k).float()
    if rows.shape[0] == 0 or k < 2:
        return torch.tensor(float("nan"), device=probs.device)
    entropy = -(rows * torch.log(rows.clamp_min(1e-30))).sum(dim=1)
    return entropy.mean() / math.log(k)


@dataclass
class CollapseMonitor:
    """Warns once per key when a monitored fraction has stayed above `high` (near uniform) or below
    `low` (collapse) for `patience` consecutive steps after `warmup` steps."""

    warmup: int
    patience: int = 50
    high: float = 0.95
    low: float = 0.05
    _streak: dict[str, int] = field(default_factory=dict)
    _warned: set[str] = field(default_factory=set)

    def update(self, step: int, values: dict[str, float]) -> list[str]:
        """Feed one step's values; return the warnings that fire at this step (each key at most once)."""
        warnings = []
        for key in MONITOR_KEYS:
            value = values.get(key)
            if value is None or math.isnan(value) or step < self.warmup:
                continue
            state = "uniform" if value > self.high else "collapsed" if value < self.low else None
            self._streak[key] = self._streak.get(key, 0) + 1 if state else 0
            if state and self._streak[key] >= self.patience and key not in self._warned:
                self._warned.add(key)
                what = (
                    f"near uniform (> {self.high:.2f} of ln K): the teacher gives the student almost "
                    "nothing to learn; lower the teacher temperature or the number of prototypes"
                    if state == "uniform"
                    else f"collapsed (< {self.low:.2f} of ln K): every sample lands on a few prototypes"
                )
                warnings.append(f"step {step}: {key} = {value:.3f} for {self.patience} steps, {what}")
        return warnings
