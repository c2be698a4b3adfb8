"""Behaviour of the SLiM loss terms: Sinkhorn centring, DINO pairs, iBOT masking/weighting, KoLeo."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from slim.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss, masked_token_weights, sinkhorn_knopp


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sinkhorn_rows_are_distributions_and_prototypes_near_uniform():
    n, k = 64, 16
    # A strongly skewed teacher: one prototype wins almost everywhere under a plain softmax.
    scores = torch.randn(n, k, generator=_gen()) * 0.1
    scores[:, 0] += 1.0
    q = sinkhorn_knopp(scores, temp=0.05, n_iterations=3)
    assert q.shape == (n, k) and (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n))  # exact after the last row step
    softmax_mass = F.softmax(scores / 0.05, dim=-1).sum(dim=0)
    sinkhorn_mass = q.sum(dim=0)
    uniform = torch.full((k,), n / k)
    # Plain softmax gives prototype 0 nearly all the mass; 3 Sinkhorn iterations spread it to about
    # n/k each, and more iterations converge to exactly uniform prototype marginals.
    assert softmax_mass[0] > 0.9 * n
    torch.testing.assert_close(sinkhorn_mass, uniform, rtol=0.15, atol=0.0)
    converged = sinkhorn_knopp(scores, temp=0.05, n_iterations=100).sum(dim=0)
    torch.testing.assert_close(converged, uniform, rtol=1e-3, atol=0.0)


def test_sinkhorn_is_shift_invariant_and_does_not_overflow():
    scores = torch.randn(32, 8, generator=_gen(1))
    q = sinkhorn_knopp(scores, temp=0.1)
    torch.testing.assert_close(sinkhorn_knopp(scores + 100.0, temp=0.1), q)
    # exp(100 / 0.04) overflows float32 unless the maximum is taken out first.
    assert torch.isfinite(sinkhorn_knopp(scores + 100.0, temp=0.04)).all()


def test_sinkhorn_accepts_no_rows():
    assert sinkhorn_knopp(torch.zeros(0, 8), temp=0.1).shape == (0, 8)


def _reference_dino(student, teacher, temp=0.1, include_same=False):
    """Straight double loop over pairs."""
    terms = []
    for i in range(teacher.shape[0]):
        for j in range(student.shape[0]):
            if i == j and not include_same:
                continue
            log_p = F.log_softmax(student[j] / temp, dim=-1)
            terms.append(-(teacher[i] * log_p).sum(-1).mean())
    return torch.stack(terms).mean()


def test_dino_loss_matches_pairwise_reference_and_skips_same_view():
    g, v, b, k = 2, 6, 5, 12
    student = torch.randn(v, b, k, generator=_gen(2))
    loss_fn = DINOLoss(student_temp=0.1)
    teacher = loss_fn.sinkhorn_knopp_teacher(torch.randn(g, b, k, generator=_gen(3)), teacher_temp=0.05)
    loss = loss_fn(student, teacher)
    torch.testing.assert_close(loss, _reference_dino(student, teacher))
    assert not torch.isclose(loss, _reference_dino(student, teacher, include_same=True))


def test_dino_loss_ignores_student_view_against_its_own_teacher_view():
    """One teacher view, two student views: student view 0 is the teacher's own view and is skipped."""
    g, b, k = 1, 4, 8
    student = torch.randn(2, b, k, generator=_gen(4))
    teacher = F.softmax(torch.randn(g, b, k, generator=_gen(5)), dim=-1)
    loss_fn = DINOLoss()
    base = loss_fn(student, teacher)
    changed = student.clone()
    changed[0] = torch.randn(b, k, generator=_gen(6))  # the view the teacher also saw
    torch.testing.assert_close(loss_fn(changed, teacher), base)
    changed[1] += torch.randn(b, k, generator=_gen(7))  # a different view does count
    assert not torch.isclose(loss_fn(changed, teacher), base)


def test_dino_loss_backpropagates_to_student_only():
    student = torch.randn(3, 4, 8, generator=_gen(8), requires_grad=True)
    teacher_scores = torch.randn(2, 4, 8, generator=_gen(9), requires_grad=True)
    loss_fn = DINOLoss()
    loss = loss_fn(student, loss_fn.sinkhorn_knopp_teacher(teacher_scores, 0.04))
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher_scores.grad is None


def test_masked_token_weights_give_each_sample_total_one():
    masks = torch.zeros(3, 2, 4, dtype=torch.bool)
    masks[0, 0, :1] = True  # 1 token
    masks[1] = True  # 8 tokens
    # sample 2: nothing masked
    w = masked_token_weights(masks)
    assert w.shape == (9,)
    torch.testing.assert_close(w[:1].sum(), torch.tensor(1.0))
    torch.testing.assert_close(w[1:].sum(), torch.tensor(1.0))


def test_ibot_loss_uses_masked_positions_only():
    """The loss takes student scores *gathered at masked tokens*: build them from full token grids and
    check that editing student tokens at unmasked positions leaves the loss unchanged."""
    n, p, k = 4, 10, 16
    masks = torch.rand(n, p, generator=_gen(10)) < 0.4
    masks[0, 0] = True
    student_tokens = torch.randn(n, p, k, generator=_gen(11))
    teacher_tokens = torch.randn(n, p, k, generator=_gen(12))
    loss_fn = iBOTPatchLoss()
    targets = loss_fn.sinkhorn_knopp_teacher(teacher_tokens[masks], teacher_temp=0.05)
    loss = loss_fn(student_tokens[masks], targets, masks)
    edited = student_tokens.clone()
    edited[~masks] = torch.randn(int((~masks).sum()), k, generator=_gen(13)) * 10
    torch.testing.assert_close(loss_fn(edited[masks], targets, masks), loss)
    edited[masks] += 1.0
    edited[0, 0] += torch.randn(k, generator=_gen(14)) * 3
    assert not torch.isclose(loss_fn(edited[masks], targets, masks), loss)


def test_ibot_loss_weights_every_masked_sample_equally():
    """Sample 0 has 1 masked token, sample 1 has 6: the loss is the mean over samples of each sample's
    own mean cross-entropy, not the mean over all 7 tokens. Sample 2 (unmasked) does not dilute it."""
    k = 8
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[0, 2] = True
    masks[1] = True
    student = torch.randn(7, k, generator=_gen(15))
    teacher = F.softmax(torch.randn(7, k, generator=_gen(16)), dim=-1)
    ce = -(teacher * F.log_softmax(student / 0.1, dim=-1)).sum(-1)
    expected = (ce[0] + ce[1:].mean()) / 2
    loss = iBOTPatchLoss(student_temp=0.1)(student, teacher, masks)
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, ce.mean())


def test_ibot_loss_without_masked_tokens_is_zero_and_differentiable():
    student = torch.zeros(0, 8, requires_grad=True)
    loss = iBOTPatchLoss()(student, torch.zeros(0, 8), torch.zeros(2, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0


def test_koleo_is_larger_for_clustered_than_spread_features():
    koleo = KoLeoLoss()
    spread = torch.eye(8, 16)  # orthogonal unit vectors: nearest neighbour at distance sqrt(2)
    clustered = torch.ones(8, 16) + 0.01 * torch.randn(8, 16, generator=_gen(17))
    assert koleo(clustered) > koleo(spread) + 1.0
    torch.testing.assert_close(koleo(spread), -torch.log(torch.tensor(2.0).sqrt()))
    # Only the direction matters (features are L2-normalised first).
    torch.testing.assert_close(koleo(3.0 * clustered), koleo(clustered))


def test_koleo_gradient_pushes_nearest_neighbours_apart():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], requires_grad=True)
    KoLeoLoss()(x).backward()
    step = x - 0.1 * x.grad
    before = F.normalize(x.detach(), dim=-1)
    after = F.normalize(step.detach(), dim=-1)
    assert (after[0] - after[1]).norm() > (before[0] - before[1]).norm()


def test_sinkhorn_under_torch_distributed_matches_single_process(tmp_path):
    """The all-reduce path runs (one-process gloo group) and gives the same targets."""
    scores = torch.randn(16, 8, generator=_gen(18))
    expected = sinkhorn_knopp(scores, temp=0.05)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.testing.assert_close(sinkhorn_knopp(scores, temp=0.05), expected)
        torch.testing.assert_close(iBOTPatchLoss().sinkhorn_knopp_teacher(scores, 0.05), expected)
    finally:
        dist.destroy_process_group()
