"""The SLiM student/teacher module on real NW-UCLA clips: losses, gradients, teacher, overfitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slim.data.transforms import prepare_clip, training_clip
from slim.encoder import EncoderConfig
from slim.layouts import get_layout
from slim.monitor import MONITOR_KEYS
from slim.schedules import Schedules
from slim.ssl import SLiM, SLiMConfig
from slim.views import ViewConfig, Views, collate_clips, make_views

BATCH = 4


def tiny_config() -> SLiMConfig:
    return SLiMConfig(
        encoder=EncoderConfig(num_joints=20, dim=64, depth=2, heads=4),
        num_prototypes=256,
        head_hidden_dim=256,
        head_bottleneck_dim=64,
    )


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The tiny model's ops are too small to gain from intra-op threads, and on a shared machine
    spinning threads slow the training loop several-fold; run this module on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def views(ucla_sequences) -> Views:
    """One fixed batch of views of real clips (fixed generators: the same batch every time)."""
    layout = get_layout("ucla20")
    rng = np.random.default_rng(0)
    clips = [
        torch.from_numpy(training_clip(prepare_clip(s.joints, layout), rng)) for s in ucla_sequences[:BATCH]
    ]
    padded, lengths = collate_clips(clips)
    # One local crop of each length per global (the paper has two 16-frame ones) keeps the test fast.
    config = ViewConfig(local_frames=(32, 16, 8))
    return make_views(padded, lengths, layout, config, torch.Generator().manual_seed(0))


@pytest.fixture
def model() -> SLiM:
    torch.manual_seed(0)
    return SLiM(tiny_config())


def test_forward_returns_finite_losses_and_total(model, views):
    assert views.global_masks.any() and not views.global_masks.all()
    out = model(views, teacher_temp=0.04)
    assert set(out) == {"loss", "dino", "ibot", "koleo", *MONITOR_KEYS}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    # the collapse monitor: entropies as fractions of ln K, carrying no gradient
    assert all(0.0 < out[k].item() < 1.0 and not out[k].requires_grad for k in MONITOR_KEYS)
    cfg = model.cfg
    expected = cfg.dino_weight * out["dino"] + cfg.mfm_weight * out["ibot"] + cfg.koleo_weight * out["koleo"]
    torch.testing.assert_close(out["loss"], expected)
    assert out["ibot"] > 0  # some global tokens are masked


def test_gradients_reach_student_not_teacher(model, views):
    model(views, teacher_temp=0.04)["loss"].backward()
    for name, p in model.student.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Every part of the student learns: encoder, both heads (the prototypes too).
    for part in ("encoder", "cls_head", "patch_head"):
        assert any(p.grad.abs().sum() > 0 for p in model.student[part].parameters() if p.requires_grad), part
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())


def test_teacher_sees_unmasked_globals_in_eval_mode(model, views, monkeypatch):
    seen = []
    teacher_encoder = model.teacher["encoder"]
    original = teacher_encoder.forward_features

    def spy(x, mask=None):
        seen.append((x.shape, mask, torch.is_grad_enabled(), teacher_encoder.training))
        return original(x, mask)

    monkeypatch.setattr(teacher_encoder, "forward_features", spy)
    model.train()
    model(views, teacher_temp=0.04)
    assert seen == [(views.global_views.shape, None, False, False)]
    assert model.student.training and not model.teacher.training


def test_one_student_encoder_call_per_view_length(model, views, monkeypatch):
    lengths = []
    student_encoder = model.student["encoder"]
    original = student_encoder.forward_features

    def spy(x, mask=None):
        lengths.append((x.shape[2], mask is not None))
        return original(x, mask)

    monkeypatch.setattr(student_encoder, "forward_features", spy)
    model(views, teacher_temp=0.04)
    assert sorted(lengths) == sorted([(64, True)] + [(f, True) for f in views.local_views])


def test_patch_heads_run_on_masked_global_tokens_only(model, views, monkeypatch):
    rows = {}

    def spy(who, original):
        def forward(x):
            rows[who] = len(x)
            return original(x)

        return forward

    for who in ("student", "teacher"):
        head = getattr(model, who)["patch_head"]
        monkeypatch.setattr(head, "forward", spy(who, head.forward))
    model(views, teacher_temp=0.04)
    assert rows == {"student": int(views.global_masks.sum()), "teacher": int(views.global_masks.sum())}


def test_update_teacher_moves_teacher_towards_student(model, views):
    before = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.1)
    model.update_teacher(0.9)
    for b, t, s in zip(before, model.teacher.parameters(), model.student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def test_param_groups_cover_trainable_student_once(model):
    groups = model.param_groups(weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.student.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    names = {id(p): n for n, p in model.student.named_parameters()}
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            decays = g["wd_multiplier"] > 0
            assert g["weight_decay"] == pytest.approx(0.05 * g["wd_multiplier"])
            assert g["is_last_layer"] == (".last_layer." in name), name
            if p.ndim < 2 or name.split(".")[-1] in {
                "cls_token",
                "register_tokens",
                "mask_token",
                "pos_embed",
            }:
                assert not decays, name
            else:
                assert decays, name


def test_small_slim_overfits_a_fixed_batch_of_real_clips(views):
    """30 AdamW steps with the EMA teacher on one batch: the loss falls well below its start.

    It cannot fall to 0: Sinkhorn spreads the 2B teacher rows over all K prototypes, so each target
    has entropy of at least log(K / 2B), the floor of the cross-entropy.
    """
    torch.manual_seed(0)
    model = SLiM(tiny_config()).train()
    steps = 30
    schedules = Schedules.build(
        steps, lr=2e-3, lr_warmup_steps=3, momentum=(0.9, 0.99), teacher_temp_warmup_steps=0
    )
    optimizer = torch.optim.AdamW(model.param_groups(0.04))
    losses = []
    for step in range(steps):
        values = schedules[step]
        values.apply_to(optimizer)
        out = model(views, teacher_temp=values.teacher_temp)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.student.parameters(), 3.0)
        optimizer.step()
        model.update_teacher(values.momentum)
        losses.append({k: v.item() for k, v in out.items()})
    first = np.mean([x["loss"] for x in losses[:3]])
    last = np.mean([x["loss"] for x in losses[-3:]])
    assert last < 0.92 * first, [round(x["loss"], 3) for x in losses]
    assert losses[-1]["dino"] < losses[0]["dino"] and losses[-1]["ibot"] < losses[0]["ibot"]
