"""FLOP counting (attention included), parameter counts and the timing helpers."""

from __future__ import annotations

import pytest
import torch

from slim.flops import (
    count_flops,
    count_flops_of,
    count_params,
    inference_report,
    interleaved_median_seconds,
    measure_matmul_gflops,
    measure_throughput,
)
from slim.models import build


def vit_flops(batch, tokens, dim, depth, ffn_macs_per_token, patch_macs_per_token, data_tokens):
    """Analytic forward FLOPs (2 per multiply-add): projections, FFN, attention (QK^T and AV), patch embed."""
    linear = depth * batch * tokens * (4 * dim * dim + ffn_macs_per_token)
    attention = depth * 2 * batch * tokens * tokens * dim
    return 2 * (linear + attention + batch * data_tokens * patch_macs_per_token)


@pytest.mark.parametrize("frames", [64, 16])
def test_slim_count_matches_analytic_including_attention(frames, monkeypatch):
    model = build("slim", "ucla20", dim=64, depth=2, heads=4)
    B, J, h = 3, 20, model.cfg.ffn_hidden
    data = frames // 8 * J
    n = 5 + data  # CLS + 4 registers + data tokens
    expected = vit_flops(B, n, 64, 2, 64 * 2 * h + h * 64, 3 * 8 * 64, data)
    counted = count_flops(model, torch.randn(B, 3, frames, J))
    assert counted == expected
    # with attention removed (output = values) the count drops by exactly the attention matmuls
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda q, k, v: v)
    without_attention = count_flops(model, torch.randn(B, 3, frames, J))
    assert counted - without_attention == 2 * 2 * 2 * B * n * n * 64  # depth x (QK^T, AV) x 2 x B H N^2 hd


def test_mae_count_matches_analytic():
    model = build("mae", "ucla20", dim=64, depth=2, heads=4)
    B, n = 2, 30 * 20
    expected = vit_flops(B, n, 64, 2, 2 * 64 * 256, 12 * 64, n)
    assert count_flops(model, torch.randn(B, 3, 120, 20)) == expected


def test_backward_is_counted():
    model = build("slim", "ucla20", dim=64, depth=1, heads=4)
    x = torch.randn(2, 3, 16, 20)
    forward = count_flops(model, x)
    step = count_flops_of(lambda: model(x).sum().backward())
    assert 2.5 * forward < step < 3.5 * forward  # backward costs about twice the forward


def test_paper_configs():
    slim, mae = build("slim", "ntu25"), build("mae", "ntu25")
    assert count_params(slim) == sum(p.numel() for p in slim.parameters())
    assert count_params(mae.requires_grad_(False), trainable_only=True) == 0
    # one person each: the 750-token MAE costs several times the 200-token SLiM encoder
    ratio = count_flops(mae, torch.randn(1, 3, 120, 25)) / count_flops(slim, torch.randn(1, 3, 64, 25))
    assert 4 < ratio < 6


def test_timing_helpers():
    model = build("slim", "ucla20", dim=32, depth=1, heads=2)
    assert measure_throughput(model, torch.randn(4, 3, 16, 20), warmup=1, repeats=2) > 0
    assert measure_matmul_gflops(size=128, repeats=2) > 0
    times = interleaved_median_seconds(
        {"a": lambda: None, "b": lambda: sum(range(1000))}, warmup=0, repeats=3
    )
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


def test_inference_report_protocols_are_consistent():
    encoders = {
        "slim": build("slim", "ucla20", dim=32, depth=1, heads=2).eval(),
        "mae": build("mae", "ucla20", dim=32, depth=1, heads=2).eval(),
    }
    r = inference_report(encoders, batch=2, persons_present=1.25, warmup=0, repeats=2, matmul_size=64)
    slim, mae = r["models"]["slim"], r["models"]["mae"]
    assert (slim["tokens"], mae["tokens"]) == (160, 600) and (slim["clip_frames"], mae["clip_frames"]) == (
        64,
        120,
    )
    x = torch.randn(1, 3, 64, 20)
    assert slim["gflops_per_clip"] == pytest.approx(count_flops(encoders["slim"], x) / 1e9)
    assert slim["achieved_gflops_per_s"] == pytest.approx(slim["gflops_per_clip"] * slim["clips_per_s"])
    one, both, published = (r["protocols"][k] for k in ("one_person_each", "both_person_slots", "published"))
    assert one["flop_ratio_mae_over_slim"] == pytest.approx(both["flop_ratio_mae_over_slim"])
    assert published["flop_ratio_mae_over_slim"] == pytest.approx(one["flop_ratio_mae_over_slim"] * 2 / 1.25)
    assert published["wall_time_ratio_mae_over_slim"] == pytest.approx(
        one["wall_time_ratio_mae_over_slim"] * 1.6
    )
