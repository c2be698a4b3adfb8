"""KoLeo regulariser: spreads features over the sphere (Sablayrolles et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """-mean log distance from each L2-normalised feature to its nearest neighbour in the batch.

    Kozachenko-Leonenko's entropy estimator up to constants: minimising it pushes neighbours apart.
    Call it on one view at a time, so that a clip's other view is not its nearest neighbour.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, D), B >= 2."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"KoLeoLoss: need (B>=2, D) features, got {tuple(features.shape)}")
        x = F.normalize(features.float(), dim=-1, eps=self.eps)
        with torch.no_grad():
            sim = x @ x.T
            sim.fill_diagonal_(float("-inf"))
            nearest = sim.argmax(dim=1)
        dist = F.pairwise_distance(x, x[nearest], eps=self.eps)
        return -torch.log(dist + self.eps).mean()
