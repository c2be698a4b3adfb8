"""Per-step schedule arrays: lengths, endpoints, monotone warm-ups, resuming by index."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slim.schedules import Schedules, cosine_schedule, linear_warmup_schedule, scaled_lr


def test_scaled_lr_is_square_root_scaling():
    assert scaled_lr(2e-4, 1024) == pytest.approx(2e-4)
    assert scaled_lr(2e-4, 768) == pytest.approx(2e-4 * math.sqrt(0.75))
    assert scaled_lr(2e-4, 256) == pytest.approx(1e-4)


def test_cosine_schedule_endpoints_and_monotone_warmup():
    s = cosine_schedule(1.0, 0.01, total_steps=100, warmup_steps=10)
    assert len(s) == 100
    assert s[0] == 0.0
    assert np.all(np.diff(s[:11]) > 0)  # warm-up rises to the peak
    assert s[10] == pytest.approx(1.0) and s.max() == pytest.approx(1.0)
    assert np.all(np.diff(s[10:]) <= 0)  # then cosine down
    assert s[-1] == pytest.approx(0.01)


def test_cosine_schedule_without_warmup_and_increasing():
    m = cosine_schedule(0.994, 1.0, total_steps=50)
    assert m[0] == pytest.approx(0.994) and m[-1] == pytest.approx(1.0)
    assert np.all(np.diff(m) >= 0)
    assert len(cosine_schedule(1.0, 0.0, total_steps=1)) == 1
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, total_steps=5, warmup_steps=6)


def test_linear_warmup_schedule_then_constant():
    t = linear_warmup_schedule(0.04, 0.07, total_steps=40, warmup_steps=30)
    assert len(t) == 40
    assert t[0] == pytest.approx(0.04)
    assert np.all(np.diff(t[:31]) > 0)
    assert np.all(t[30:] == 0.07)
    assert len(linear_warmup_schedule(0.04, 0.07, total_steps=10, warmup_steps=30)) == 10


def test_schedules_build_paper_defaults():
    sch = Schedules.build(1500, lr=1e-3)
    assert len(sch) == 1500
    first, last = sch[0], sch[len(sch) - 1]
    assert first.lr == 0.0 and last.lr == pytest.approx(1e-6)
    assert sch.lr.max() == pytest.approx(1e-3) and int(sch.lr.argmax()) == 200  # 20/150 warm-up
    assert (first.weight_decay, last.weight_decay) == (pytest.approx(0.04), pytest.approx(0.2))
    assert (first.momentum, last.momentum) == (pytest.approx(0.994), pytest.approx(1.0))
    assert first.teacher_temp == pytest.approx(0.04)
    assert sch[300].teacher_temp == pytest.approx(0.07) and last.teacher_temp == pytest.approx(0.07)
    assert sch[299].teacher_temp < 0.07  # 30/150 warm-up
    np.testing.assert_array_equal(sch.last_layer_lr, sch.lr)
    with pytest.raises(IndexError):
        sch[1500]


def test_resuming_is_one_index():
    """Two builds with the same arguments agree step by step: a resumed run needs only the step."""
    a, b = Schedules.build(300, lr=5e-4), Schedules.build(300, lr=5e-4)
    assert a[137] == b[137]


def test_freeze_last_layer_and_apply_to_optimizer():
    sch = Schedules.build(100, lr=1e-3, lr_warmup_steps=0, freeze_last_layer_steps=10)
    assert np.all(sch.last_layer_lr[:10] == 0) and sch.last_layer_lr[10] == sch.lr[10] > 0
    w = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(2))
    proto = torch.nn.Parameter(torch.zeros(3, 2))
    opt = torch.optim.AdamW(
        [
            {"params": [w], "wd_multiplier": 1.0},
            {"params": [b], "wd_multiplier": 0.0},
            {"params": [proto], "wd_multiplier": 1.0, "is_last_layer": True},
        ]
    )
    values = sch[5]
    values.apply_to(opt)
    groups = opt.param_groups
    assert groups[0]["lr"] == values.lr > 0 and groups[0]["weight_decay"] == values.weight_decay
    assert groups[1]["weight_decay"] == 0.0
    assert groups[2]["lr"] == 0.0
