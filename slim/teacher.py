"""EMA teacher: the teacher's weights follow the student's by an exponential moving average."""

from __future__ import annotations

import torch
from torch import nn


def _matched_parameters(
    teacher: nn.Module, student: nn.Module
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    t_named, s_named = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_named.keys() != s_named.keys():
        missing = sorted(t_named.keys() ^ s_named.keys())[:5]
        raise ValueError(f"teacher and student parameters differ, e.g. {missing}")
    names = list(s_named)
    return [t_named[n] for n in names], [s_named[n] for n in names]


@torch.no_grad()
def copy_student_to_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Make `teacher` an exact copy of `student` (parameters and buffers) with gradients turned off."""
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for every parameter.

    One fused `_foreach` multiply and one fused add over the whole parameter lists instead of a Python
    loop per tensor. Buffers are not averaged (they are not learned).
    """
    t_params, s_params = _matched_parameters(teacher, student)
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
