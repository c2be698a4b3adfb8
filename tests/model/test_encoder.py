"""The SLiM encoder: shapes, masking, RoPE, parameter count, optimiser groups, the model registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slim.data.transforms import eval_clip, prepare_clip
from slim.encoder import EncoderConfig, SLiMEncoder, apply_rope, configure_param_groups, rope_tables
from slim.layouts import get_layout
from slim.models import build

SMALL = {"dim": 64, "depth": 2, "heads": 4}


def real_clips(sequences, frames: int) -> torch.Tensor:
    """(B, 3, frames, 20) first persons of real NW-UCLA sequences, whole clip resampled."""
    layout = get_layout("ucla20")
    return torch.from_numpy(
        np.stack([eval_clip(prepare_clip(s.joints, layout), frames)[0] for s in sequences])
    )


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build("slim", "ucla20", **SMALL).eval()


@pytest.mark.parametrize("layout", ["ntu25", "ucla20"])
@pytest.mark.parametrize("frames", [64, 32, 16, 8])
def test_shapes(layout, frames):
    model = build("slim", layout, **SMALL).eval()
    J = get_layout(layout).num_joints
    x = torch.randn(3, 3, frames, J)
    f = model.forward_features(x)
    assert f["cls"].shape == (3, 64)
    assert f["patch"].shape == (3, frames // 8 * J, 64)
    assert f["registers"].shape == (3, 4, 64)
    assert model(x).shape == (3, model.feature_dim) == (3, 128)
    assert (model.num_frames, model.patch_size) == (64, 8)


def test_wrong_input_is_refused(small):
    with pytest.raises(ValueError, match="multiple of 8"):
        small(torch.randn(1, 3, 60, 20))
    with pytest.raises(ValueError, match="20"):
        small(torch.randn(1, 3, 64, 25))


def test_clip_feature_is_cls_and_mean_patch(small, ucla_sequences):
    x = real_clips(ucla_sequences[:2], 64)
    with torch.no_grad():
        f, feat = small.forward_features(x), small(x)
    torch.testing.assert_close(feat, torch.cat([f["cls"], f["patch"].mean(1)], -1))


def test_rows_are_independent(small, ucla_sequences):
    x = real_clips(ucla_sequences[:4], 64)
    with torch.no_grad():
        together = small(x)
        alone = torch.cat([small(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_mask_replaces_hidden_tokens(small, ucla_sequences):
    x = real_clips(ucla_sequences[:2], 64)
    with torch.no_grad():
        small.mask_token.normal_()  # a trained mask token, not the zero it starts as
        none = small.forward_features(x)
        unmasked = small.forward_features(x, mask=torch.zeros(2, 8, 20, dtype=torch.bool))
        torch.testing.assert_close(unmasked["patch"], none["patch"], rtol=0, atol=0)

        mask = torch.zeros(2, 8, 20, dtype=torch.bool)
        mask[:, 2:5, 4:8] = True  # a tube: the left arm over three temporal patches
        masked = small.forward_features(x, mask=mask)
        assert not torch.allclose(masked["cls"], none["cls"], atol=1e-4)
        # whatever the hidden frames held, the encoder cannot see it
        y = x.clone()
        y[:, :, 16:40, 4:8] = torch.randn(2, 3, 24, 4)
        torch.testing.assert_close(small.forward_features(y, mask=mask)["patch"], masked["patch"])
        # while the same change without a mask shows
        assert not torch.allclose(small.forward_features(y)["patch"], none["patch"], atol=1e-4)


def test_rope_scores_depend_only_on_relative_offset():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(32, generator=gen), torch.randn(32, generator=gen)

    def score(tq: float, tk: float) -> torch.Tensor:
        rot = rope_tables(torch.tensor([tq, tk]), 32)
        return apply_rope(q, rot[0]) @ apply_rope(k, rot[1])

    for t1, t2, s in [(0, 3, 1), (2, 7, 5), (7, 0, 13)]:
        torch.testing.assert_close(score(t1, t2), score(t1 + s, t2 + s), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(0, 3), score(0, 4), atol=1e-3)
    # a rotation: norms are kept, position 0 is the identity
    rot = rope_tables(torch.tensor([0.0, 5.0]), 32)
    torch.testing.assert_close(apply_rope(q, rot[0]), q)
    torch.testing.assert_close(apply_rope(q, rot[1]).norm(), q.norm())


def test_rope_matches_the_rotate_half_formula():
    """The one-kernel complex form equals x cos + rotate(x) sin on each (x[2i], x[2i+1]) pair."""
    x, pos = torch.randn(3, 7, 16), torch.arange(7.0)
    angles = pos[:, None] * 10000.0 ** (-torch.arange(0, 16, 2) / 16)
    even, odd = x[..., 0::2], x[..., 1::2]
    expected = torch.stack(
        [even * angles.cos() - odd * angles.sin(), even * angles.sin() + odd * angles.cos()], -1
    )
    torch.testing.assert_close(apply_rope(x, rope_tables(pos, 16)), expected.flatten(-2))


def test_rope_rows_follow_temporal_patch_only(small):
    J, prefix = small.num_joints, small.num_prefix
    rot = small.rope(8)
    assert rot.shape == (prefix + 8 * J, 8, 2)
    torch.testing.assert_close(rot[:prefix, :, 0], torch.ones(prefix, 8))  # CLS and registers: no rotation
    torch.testing.assert_close(rot[:prefix, :, 1], torch.zeros(prefix, 8))
    data = rot[prefix:].view(8, J, 8, 2)
    torch.testing.assert_close(data, data[:, :1].expand(-1, J, -1, -1))  # joints at one time share it
    assert not torch.allclose(data[0], data[1])
    # short views use a prefix of the buffer, long ones compute theirs
    torch.testing.assert_close(small.rope(2), small._rope_rows(2))
    torch.testing.assert_close(small.rope(10)[: prefix + 8 * J], rot)
    # casting the model keeps the rotations
    assert small.to(torch.float64).rope(8).dtype == torch.float64
    small.float()


def test_paper_config_parameter_count():
    model = build("slim", "ntu25")
    assert model.feature_dim == 512
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 6.37e6) < 0.01e6, n
    cfg = EncoderConfig()
    assert cfg.ffn_hidden == 688 and cfg.norm_eps == 1e-6 and cfg.num_registers == 4


def test_param_groups_decay_matrices_only(small):
    decay, no_decay = configure_param_groups(small, 0.04)
    assert decay["weight_decay"] == 0.04 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    named = dict(small.named_parameters())
    assert id(named["blocks.0.attn.qkv.weight"]) in ids and id(named["patch_embed.weight"]) in ids
    for name in (
        "cls_token",
        "register_tokens",
        "mask_token",
        "pos_embed",
        "norm.weight",
        "blocks.0.attn.qkv.bias",
    ):
        assert id(named[name]) not in ids, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)
    # names resolve inside a wrapper too
    wrapped = torch.nn.ModuleDict({"encoder": small})
    assert {id(p) for p in configure_param_groups(wrapped, 0.1)[0]["params"]} == ids


def test_every_parameter_learns(ucla_sequences):
    model = build("slim", "ucla20", **SMALL)
    x = real_clips(ucla_sequences[:2], 32)
    mask = torch.zeros(2, 4, 20, dtype=torch.bool)
    mask[0, 1] = True
    f = model.forward_features(x, mask=mask)
    (f["cls"].square().sum() + f["patch"].square().sum() + f["registers"].square().sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_build_registry():
    with pytest.raises(ValueError, match="known: mae, slim"):
        build("vit", "ntu25")
    with pytest.raises(ValueError, match="width"):
        build("slim", "ntu25", width=128)
    with pytest.raises(ValueError, match="unknown skeleton layout"):
        build("slim", "kinect")
    model = build("slim", get_layout("ucla20"), dim=128, depth=4, heads=4)
    assert isinstance(model, SLiMEncoder) and model.feature_dim == 256 and len(model.blocks) == 4
    mae = build("mae", "ucla20", dim=64, depth=1, heads=4)
    assert mae(torch.randn(2, 3, mae.num_frames, 20)).shape == (2, mae.feature_dim) == (2, 64)
