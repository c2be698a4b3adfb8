"""The SLiM encoder: a small ViT over temporal skeleton patches, plus the blocks the MAE baseline shares.

Tokens: a clip (B, 3, T, J) is cut into T//p temporal patches per joint by a (p, 1) convolution,
giving T//p * J data tokens in time-major order (index = t_patch * J + joint). In front of them sit
one CLS token and `num_registers` register tokens. Joints are told apart by a learned position
embedding shared across time; time enters only through 1-D rotary embeddings (RoPE) on the queries
and keys of the data tokens, so the same weights serve 64-frame global and 32/16/8-frame local views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- rotary embedding


def rope_tables(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotations (N, head_dim/2, 2) = (cos, sin) of 1-D RoPE at the given (N,) positions.

    Interleaved-pair convention over the full head dimension: frequency i = base^(-2i/head_dim)
    rotates the pair (x[2i], x[2i+1]). Stored as real pairs, not complex numbers, so that casting a
    module's buffers (`.to(dtype)`) cannot silently drop the imaginary part.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim
    angles = positions.to(torch.float64)[:, None] * base**-exponents
    return torch.stack([angles.cos(), angles.sin()], -1).float()


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate (..., head_dim) queries or keys by broadcastable (..., head_dim/2, 2) `rope_tables`.

    Each pair is a complex number and the rotation one complex multiply: a single elementwise
    kernel, where the rotate-half form takes five (roll, two multiplies, add, copy).
    """
    dtype = torch.promote_types(x.dtype, torch.float32)  # complex halves are not supported everywhere
    pairs = torch.view_as_complex(x.to(dtype).unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * torch.view_as_complex(rotations.to(dtype))).flatten(-2).type_as(x)


# ----------------------------------------------------------------------------- shared blocks


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; RoPE applied when tables are given."""

    def __init__(self, dim: int, heads: int, bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D); rope: (N, head_dim/2, 2) rotations from `rope_tables`, or None."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)
        q, k, v = qkv.unbind(2)  # (B, N, H, hd) views
        if rope is not None:
            q, k = apply_rope(qkv[:, :, :2], rope[:, None, None]).unbind(2)  # q and k in one kernel
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward: w12 projects to both branches at once, silu(x1) * x2, then w3."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Mlp(nn.Module):
    """The vanilla ViT feed-forward (GELU), used by the MAE baseline."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, dim: int, heads: int, ffn: nn.Module, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = ffn

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.ffn(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """The one initialisation of every ViT here: truncated normal (std .02) weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def configure_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups, nanoGPT style: matrices decay; biases, norms, tokens, embeddings don't.

    A module lists its token/embedding parameters (which are tensors of rank >= 2 that must not decay)
    in a `no_weight_decay()` method; names are resolved relative to that module, so the rule holds
    when the encoder sits inside a larger model (student, teacher, heads).
    """
    exempt = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            exempt |= {f"{prefix}.{name}" if prefix else name for name in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and name not in exempt else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- the SLiM encoder


@dataclass
class EncoderConfig:
    """Defaults are the paper's encoder (about 6.37M parameters with 25 joints)."""

    num_joints: int = 25
    num_frames: int = 64  # global-view length; any multiple of patch_size is accepted at run time
    patch_size: int = 8
    dim: int = 256
    depth: int = 8
    heads: int = 8
    ffn_hidden: int | None = None  # None: 2/3 of 4*dim rounded up to a multiple of 8 (688 for 256)
    num_registers: int = 4
    in_channels: int = 3
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    # The clip preparation the encoder expects (not used by forward): view-normalised input
    # (slim.data.transforms.normalise_view). Evaluation, embedding and the registry read it from here.
    normalise_view: bool = True

    def __post_init__(self):
        if self.ffn_hidden is None:
            self.ffn_hidden = (int(4 * self.dim * 2 / 3) + 7) // 8 * 8
        if self.num_frames % self.patch_size:
            raise ValueError(
                f"num_frames {self.num_frames} is not a multiple of patch_size {self.patch_size}"
            )
        if (self.dim // self.heads) % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {self.dim}/{self.heads}")


class SLiMEncoder(nn.Module):
    """The SLiM ViT. `forward` gives the clip feature; `forward_features` the tokens for the SSL losses."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.num_frames, self.patch_size = cfg.num_frames, cfg.patch_size
        self.num_joints, self.dim, self.normalise_view = cfg.num_joints, cfg.dim, cfg.normalise_view
        self.feature_dim = 2 * cfg.dim
        self.num_prefix = 1 + cfg.num_registers
        p = cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=(p, 1), stride=(p, 1))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_joints, cfg.dim))  # slot 0: CLS
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, SwiGLU(cfg.dim, cfg.ffn_hidden), cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.register_buffer("rope_rotations", self._rope_rows(cfg.num_frames // p), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DINOv2-style: tokens near zero (registers/CLS tiny noise), pos embed and weights std .02."""
        init_vit_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "register_tokens", "mask_token", "pos_embed"}

    def _rope_rows(self, num_patches: int, device: torch.device | None = None) -> torch.Tensor:
        """RoPE rotations (prefix + num_patches * J, head_dim/2, 2) for a whole token row: the
        identity for CLS and registers, the temporal patch index for data token t * J + j."""
        J, hd = self.num_joints, self.dim // self.cfg.heads
        data = rope_tables(
            torch.arange(num_patches, device=device).repeat_interleave(J), hd, self.cfg.rope_base
        )
        prefix = rope_tables(torch.zeros(self.num_prefix, device=device), hd)  # angle 0: no rotation
        return torch.cat([prefix, data])

    def rope(self, num_patches: int) -> torch.Tensor:
        """Rotations for `num_patches` temporal patches. Tokens are time-major, so a shorter clip's
        are a prefix of the precomputed global-view buffer; longer clips compute their own."""
        if num_patches <= self.num_frames // self.patch_size:
            return self.rope_rotations[: self.num_prefix + num_patches * self.num_joints]
        return self._rope_rows(num_patches, self.rope_rotations.device)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x: (B, C, T, J) with T a multiple of patch_size; mask: (B, T//p, J) bool, True = hidden.

        Hidden tokens have their patch embedding replaced by the learned mask token *before* the
        joint position embedding is added (iBOT/DINOv2 style), so the model still knows which joint
        a hidden token stands for, and RoPE tells it when. Returns the final-norm `cls` (B, D),
        `patch` (B, T//p * J, D) and `registers` (B, R, D).
        """
        B, _, T, J = x.shape
        if T % self.patch_size or J != self.num_joints:
            raise ValueError(
                f"expected (B, C, T, {self.num_joints}) with T a multiple of {self.patch_size}, got {tuple(x.shape)}"
            )
        tp = T // self.patch_size
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, tp*J, D), time-major
        if mask is not None:
            tokens = torch.where(mask.reshape(B, tp * J, 1), self.mask_token.to(tokens.dtype), tokens)
        tokens = (tokens.unflatten(1, (tp, J)) + self.pos_embed[:, None, 1:]).flatten(1, 2)
        prefix = torch.cat([self.cls_token + self.pos_embed[:, :1], self.register_tokens], 1)
        x = torch.cat([prefix.expand(B, -1, -1), tokens], 1)
        rope = self.rope(tp)
        for block in self.blocks:
            x = block(x, rope)
        x = self.norm(x)
        return {"cls": x[:, 0], "registers": x[:, 1 : self.num_prefix], "patch": x[:, self.num_prefix :]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip feature (B, 2D): [final CLS, mean of patch tokens] (the authors' evaluation feature)."""
        f = self.forward_features(x)
        return torch.cat([f["cls"], f["patch"].mean(1)], -1)
