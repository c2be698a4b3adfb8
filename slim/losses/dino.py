"""DINO loss on CLS prototypes (the paper's global-local contrastive term, L_GLCL)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(x: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce across ranks; a no-op when torch.distributed is not initialised."""
    if _distributed():
        dist.all_reduce(x, op=op)
    return x


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Teacher targets from prototype scores (N, K) by Sinkhorn-Knopp, over all ranks' N rows.

    Alternately rescales the (N, K) transport plan so that every prototype carries total mass 1/K and
    every row 1/N (N counted over all ranks); the result is rescaled so that each row sums to exactly 1
    (a distribution over prototypes), while prototype totals are only approximately N/K after a few
    iterations. This spreads the batch over the prototypes and so prevents collapse, with no running
    centre to keep.
    """
    scores = scores.float()
    n_rows = _all_reduce(torch.tensor(float(scores.shape[0]), device=scores.device))
    k = scores.shape[1]
    # exp of scores above the global max cannot overflow; a constant shift cancels in the normalisation.
    top = scores.max() if scores.numel() else scores.new_tensor(float("-inf"))
    top = _all_reduce(top, dist.ReduceOp.MAX)
    q = torch.exp((scores - top) / temp)
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=0, keepdim=True)) * k
        q /= q.sum(dim=1, keepdim=True) * n_rows
    return q * n_rows


class DINOLoss(nn.Module):
    """Cross-entropy between Sinkhorn-centred teacher CLS targets and student CLS predictions.

    Every teacher global view is paired with every student view except the same view (a view is not
    asked to predict itself); the loss is the mean over those pairs of the batch-mean cross-entropy.
    """

    def __init__(self, student_temp: float = 0.1, sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.sinkhorn_iterations = sinkhorn_iterations

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_scores: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(..., K) teacher scores -> targets of the same shape, each summing to 1 over K.

        All leading rows are centred together (e.g. both global views of the batch).
        """
        flat = teacher_scores.reshape(-1, teacher_scores.shape[-1])
        return sinkhorn_knopp(flat, teacher_temp, self.sinkhorn_iterations).view(teacher_scores.shape)

    def forward(self, student_scores: torch.Tensor, teacher_targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over (teacher view, student view) pairs.

        student_scores: (V, B, K) raw prototype scores of V student views, the first G of which are the
            same views as the teacher's (in the same order), then the locals.
        teacher_targets: (G, B, K) teacher distributions (from `sinkhorn_knopp_teacher`).
        """
        g, v = teacher_targets.shape[0], student_scores.shape[0]
        if v < g or student_scores.shape[1:] != teacher_targets.shape[1:]:
            raise ValueError(
                f"DINOLoss: student {tuple(student_scores.shape)} must be (V>=G, B, K) for teacher "
                f"{tuple(teacher_targets.shape)}"
            )
        log_p = F.log_softmax(student_scores.float() / self.student_temp, dim=-1)
        # ce[i, j] = batch-mean cross-entropy of teacher view i against student view j.
        ce = -torch.einsum("gbk,vbk->gv", teacher_targets.float(), log_p) / student_scores.shape[1]
        same_view = torch.eye(g, v, dtype=torch.bool, device=ce.device)
        return ce[~same_view].mean()
