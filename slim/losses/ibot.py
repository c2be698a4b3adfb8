"""iBOT loss on masked patch tokens (the paper's masked feature modelling term, L_MFM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slim.losses.dino import sinkhorn_knopp


def masked_token_weights(masks: torch.Tensor) -> torch.Tensor:
    """Weight 1/n_b for each masked token of sample b, in `masks.flatten(1)[mask]` order.

    masks: (N, ...) bool, True = masked. Returns (M,) float, M = masks.sum().
    """
    flat = masks.flatten(1)
    per_sample = 1.0 / flat.sum(dim=1).clamp(min=1).float()
    return per_sample.unsqueeze(1).expand_as(flat)[flat]


class iBOTPatchLoss(nn.Module):
    """Cross-entropy between teacher targets and student predictions at the masked tokens only.

    The caller gathers the masked tokens (student: from the masked view; teacher: the same positions of
    the unmasked view) before the heads, so the head never runs on tokens that carry no loss. Each token
    is weighted by 1/(masked tokens of its sample) and the sum is divided by the number of samples that
    have any masked token: every masked sample counts equally, however much of it was masked, and views
    left unmasked do not dilute the loss.
    """

    def __init__(self, student_temp: float = 0.1, sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.sinkhorn_iterations = sinkhorn_iterations

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_scores: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(M, K) teacher scores of the masked tokens -> (M, K) targets, centred over all of them."""
        return sinkhorn_knopp(teacher_scores, teacher_temp, self.sinkhorn_iterations)

    def forward(
        self, student_scores: torch.Tensor, teacher_targets: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """student_scores, teacher_targets: (M, K) for the masked tokens in `masks.flatten(1)[mask]`
        order; masks: (N, ...) bool, True = masked, M = masks.sum()."""
        n_masked = int(masks.sum())
        if student_scores.shape[0] != n_masked or teacher_targets.shape != student_scores.shape:
            raise ValueError(
                f"iBOTPatchLoss: got student {tuple(student_scores.shape)} and teacher "
                f"{tuple(teacher_targets.shape)} scores for {n_masked} masked tokens"
            )
        log_p = F.log_softmax(student_scores.float() / self.student_temp, dim=-1)
        ce = -(teacher_targets.float() * log_p).sum(dim=-1)
        n_samples = masks.flatten(1).any(dim=1).sum().clamp(min=1)
        return (ce * masked_token_weights(masks)).sum() / n_samples
