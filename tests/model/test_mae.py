"""The MAE baseline: token layout, masking, motion target, the loss, and its shared blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slim.data.transforms import eval_clip, prepare_clip
from slim.encoder import Attention, Block
from slim.layouts import get_layout
from slim.mae import MAE, MAEConfig, MAEEncoder, motion, patchify, random_keep
from slim.models import build

SMALL = {"dim": 64, "depth": 2, "heads": 4, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4}


@pytest.fixture(scope="module")
def clip(ucla_sequences) -> torch.Tensor:
    """(1, 3, 120, 20): a real NW-UCLA clip, first person, whole clip resampled to 120 frames."""
    return torch.from_numpy(eval_clip(prepare_clip(ucla_sequences[0].joints, get_layout("ucla20")), 120)[:1])


def test_paper_config_tokens_and_blocks():
    enc = build("mae", "ntu25")
    assert isinstance(enc, MAEEncoder) and (enc.num_frames, enc.patch_size, enc.feature_dim) == (120, 4, 256)
    assert enc.embed(torch.randn(2, 3, 120, 25)).shape == (2, 750, 256)
    assert enc(torch.randn(2, 3, 120, 25)).shape == (2, 256)
    # the same block and attention code as the SLiM encoder, so the kernels compared are the same
    assert all(isinstance(b, Block) and isinstance(b.attn, Attention) for b in enc.blocks)
    assert len(enc.blocks) == 8 and enc.blocks[0].norm1.eps == 1e-5
    assert len(MAE(MAEConfig()).decoder_blocks) == 5


def test_tokens_are_time_major_patches():
    x = torch.arange(2 * 3 * 8 * 5, dtype=torch.float32).reshape(2, 3, 8, 5)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 2 * 5, 12)
    # token t * J + j holds frames 4t..4t+3 of joint j, as (frame, coordinate)
    torch.testing.assert_close(tokens[1, 1 * 5 + 3], x[1, :, 4:8, 3].T.reshape(-1))


def test_motion_is_frame_difference():
    x = torch.randn(2, 3, 8, 5)
    m = motion(x)
    torch.testing.assert_close(m[:, :, :-1], x[:, :, 1:] - x[:, :, :-1])
    torch.testing.assert_close(m[:, :, -1], m[:, :, -2])


def test_masking_hides_ninety_percent_per_sample(clip):
    keep = random_keep(4, 750, 0.9, torch.Generator().manual_seed(0))
    assert keep.shape == (4, 75)
    assert all(len(set(row.tolist())) == 75 for row in keep)
    assert not torch.equal(keep[0].sort().values, keep[1].sort().values)
    torch.testing.assert_close(keep, random_keep(4, 750, 0.9, torch.Generator().manual_seed(0)))

    torch.manual_seed(0)
    model = MAE(MAEConfig(num_joints=20, **SMALL))
    out = model(clip.expand(3, -1, -1, -1), torch.Generator().manual_seed(1))
    assert out["mask"].shape == (3, 600)
    assert out["mask"].sum(1).tolist() == [540, 540, 540]


def test_loss_only_on_masked_tokens(clip):
    torch.manual_seed(0)
    model = MAE(MAEConfig(num_joints=20, **SMALL))
    out = model(clip, torch.Generator().manual_seed(0))
    out["pred"].retain_grad()
    out["loss"].backward()
    grad, mask = out["pred"].grad, out["mask"]
    assert grad[~mask].abs().max() == 0 and grad[mask].abs().sum() > 0
    target = out["target"]
    torch.testing.assert_close(target.mean(-1), torch.zeros_like(target[..., 0]), atol=1e-5, rtol=0)


def test_encoder_sees_only_visible_tokens(clip):
    """Changing the frames of masked tokens leaves the prediction unchanged."""
    torch.manual_seed(0)
    model = MAE(MAEConfig(num_joints=20, **SMALL)).eval()
    with torch.no_grad():
        out = model(clip, torch.Generator().manual_seed(0))
        hidden = out["mask"][0].view(30, 20)
        t, j = map(int, hidden.nonzero()[0])
        y = clip.clone()
        y[0, :, 4 * t : 4 * t + 4, j] += 1.0
        torch.testing.assert_close(model(y, torch.Generator().manual_seed(0))["pred"], out["pred"])


def test_loss_decreases_when_overfitting_a_real_clip(clip):
    torch.manual_seed(0)
    model = MAE(MAEConfig(num_joints=20, num_frames=40, **{**SMALL, "dim": 32, "decoder_dim": 32}))
    short = clip[:, :, ::3]  # 40 frames: 200 tokens keep the test quick
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        loss = model(short, torch.Generator().manual_seed(0))["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
