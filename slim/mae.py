"""The MAE baseline (MAMP-style), built from the same blocks and attention kernel as the SLiM encoder.

Encoder: vanilla ViT (GELU MLP, no RoPE, no CLS) over 4-frame patches: a 120-frame clip with J
joints gives 30 * J tokens (750 for NTU), time-major. Position = learned temporal embedding
(1, T//p, 1, D) + learned joint embedding (1, 1, J, D). Pretraining hides 90% of the tokens at random
(per sample); the encoder sees only the visible ones, a light decoder gets them back with mask
tokens and regresses the *motion* (frame differences) of each masked patch. At inference the encoder
sees all tokens and the clip feature is their mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slim.encoder import Block, Mlp, init_vit_weights


@dataclass
class MAEConfig:
    """Defaults are MAMP's NTU-60 configuration (decoder 5 blocks; 3-5 are used across datasets)."""

    num_joints: int = 25
    num_frames: int = 120
    patch_size: int = 4
    dim: int = 256
    depth: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    in_channels: int = 3
    norm_eps: float = 1e-5
    decoder_dim: int = 256
    decoder_depth: int = 5
    decoder_heads: int = 8
    mask_ratio: float = 0.9
    norm_target: bool = True  # standardise each target patch (MAE's norm_pix_loss); False: raw motion
    normalise_view: bool = True  # the clip preparation the encoder expects (see slim.encoder.EncoderConfig)

    def __post_init__(self):
        if self.num_frames % self.patch_size:
            raise ValueError(
                f"num_frames {self.num_frames} is not a multiple of patch_size {self.patch_size}"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, T, J) -> (B, T//p * J, p * C) time-major tokens, each the (frame, coordinate) values."""
    B, C, T, J = x.shape
    return (
        x.reshape(B, C, T // patch_size, patch_size, J).permute(0, 2, 4, 3, 1).reshape(B, -1, patch_size * C)
    )


def motion(x: torch.Tensor) -> torch.Tensor:
    """Frame differences x[t+1] - x[t] of a (B, C, T, J) clip; the last frame repeats the previous one."""
    d = x[:, :, 1:] - x[:, :, :-1]
    return torch.cat([d, d[:, :, -1:]], dim=2)


class MAEEncoder(nn.Module):
    """The MAE encoder; `forward(x)` is the inference clip feature (B, D): the mean of all tokens."""

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        self.num_frames, self.patch_size, self.num_joints = cfg.num_frames, cfg.patch_size, cfg.num_joints
        self.feature_dim, self.normalise_view = cfg.dim, cfg.normalise_view
        self.patch_embed = nn.Linear(cfg.patch_size * cfg.in_channels, cfg.dim)
        self.temporal_embed = nn.Parameter(torch.zeros(1, cfg.num_frames // cfg.patch_size, 1, cfg.dim))
        self.joint_embed = nn.Parameter(torch.zeros(1, 1, cfg.num_joints, cfg.dim))
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, Mlp(cfg.dim, hidden), cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        init_vit_weights(self)
        nn.init.trunc_normal_(self.temporal_embed, std=0.02)
        nn.init.trunc_normal_(self.joint_embed, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"temporal_embed", "joint_embed"}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, J) -> position-embedded tokens (B, T//p * J, D); T must be `num_frames`."""
        if x.shape[2:] != (self.num_frames, self.num_joints):
            raise ValueError(f"expected (B, C, {self.num_frames}, {self.num_joints}), got {tuple(x.shape)}")
        tokens = self.patch_embed(patchify(x, self.patch_size)).unflatten(1, (-1, self.num_joints))
        return (tokens + self.temporal_embed + self.joint_embed).flatten(1, 2)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(self.embed(x)).mean(1)


def random_keep(
    batch: int, num_tokens: int, mask_ratio: float, generator: torch.Generator, device=None
) -> torch.Tensor:
    """Indices (B, K) of the tokens kept visible, K = num_tokens * (1 - mask_ratio), uniform per sample."""
    keep = round(num_tokens * (1 - mask_ratio))
    noise = torch.rand(batch, num_tokens, generator=generator, device=device)
    return noise.argsort(dim=1)[:, :keep]


class MAE(nn.Module):
    """MAE pretraining model: `forward(x, generator)` -> {"loss", "mask", "pred", "target"}."""

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MAEEncoder(cfg)
        n_t = cfg.num_frames // cfg.patch_size
        self.decoder_embed = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.decoder_temporal_embed = nn.Parameter(torch.zeros(1, n_t, 1, cfg.decoder_dim))
        self.decoder_joint_embed = nn.Parameter(torch.zeros(1, 1, cfg.num_joints, cfg.decoder_dim))
        hidden = int(cfg.decoder_dim * cfg.mlp_ratio)
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_dim, cfg.decoder_heads, Mlp(cfg.decoder_dim, hidden), cfg.norm_eps)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, cfg.patch_size * cfg.in_channels)
        init_vit_weights(self.decoder_embed)
        init_vit_weights(self.decoder_blocks)
        init_vit_weights(self.decoder_norm)
        init_vit_weights(self.decoder_pred)
        for p in (self.mask_token, self.decoder_temporal_embed, self.decoder_joint_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_temporal_embed", "decoder_joint_embed"}

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token regression target (B, N, p * C): the patch's motion, standardised if configured."""
        t = patchify(motion(x), self.cfg.patch_size)
        if self.cfg.norm_target:
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        return t

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """x: (B, C, num_frames, J). Loss = MSE over the masked tokens only."""
        tokens = self.encoder.embed(x)
        B, N, D = tokens.shape
        keep = random_keep(B, N, self.cfg.mask_ratio, generator, device=x.device)
        visible = tokens.gather(1, keep[..., None].expand(-1, -1, D))
        latent = self.decoder_embed(self.encoder.encode(visible))

        full = self.mask_token.expand(B, N, -1).scatter(
            1, keep[..., None].expand(-1, -1, latent.shape[-1]), latent
        )
        pos = (self.decoder_temporal_embed + self.decoder_joint_embed).flatten(1, 2)
        h = full + pos
        for block in self.decoder_blocks:
            h = block(h)
        pred = self.decoder_pred(self.decoder_norm(h))

        mask = torch.ones(B, N, dtype=torch.bool, device=x.device).scatter(1, keep, False)
        target = self.target(x)
        loss = F.mse_loss(pred[mask], target[mask])
        return {"loss": loss, "mask": mask, "pred": pred, "target": target}
