"""The EMA teacher update: exact, fused, and gradient-free."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slim.teacher import copy_student_to_teacher, ema_update


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3, bias=False))


def test_copy_student_to_teacher_is_exact_and_freezes_teacher():
    student, teacher = _net(0), _net(1)
    copy_student_to_teacher(student, teacher)
    for (n, s), (_, t) in zip(student.named_parameters(), teacher.named_parameters(), strict=True):
        assert torch.equal(s, t), n
        assert not t.requires_grad and s.requires_grad


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.994, 1.0])
def test_ema_update_is_bitwise_equal_to_a_reference_loop(momentum):
    student, teacher = _net(0), _net(1)
    teacher.requires_grad_(False)
    expected = copy.deepcopy(teacher)
    with torch.no_grad():
        for t, s in zip(expected.parameters(), student.parameters(), strict=True):
            t.mul_(momentum).add_(s, alpha=1.0 - momentum)
    before = [t.clone() for t in teacher.parameters()]
    ema_update(teacher, student, momentum)
    for t, e, b, s in zip(
        teacher.parameters(), expected.parameters(), before, student.parameters(), strict=True
    ):
        assert torch.equal(t, e)
        torch.testing.assert_close(t, momentum * b + (1 - momentum) * s)
    if momentum == 1.0:
        assert all(torch.equal(t, b) for t, b in zip(teacher.parameters(), before, strict=True))
    if momentum == 0.0:
        assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True))


def test_ema_update_matches_parameters_by_name_and_rejects_mismatch():
    student = _net(0)
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Sequential(nn.Linear(5, 7)), student, 0.9)


def test_ema_update_builds_no_graph_and_leaves_student_untouched():
    student, teacher = _net(0), _net(1)
    teacher.requires_grad_(False)
    snapshot = [p.clone() for p in student.parameters()]
    ema_update(teacher, student, 0.9)
    assert all(p.grad_fn is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(p, s) for p, s in zip(student.parameters(), snapshot, strict=True))
