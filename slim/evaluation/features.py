"""Clip features of a frozen encoder, as the evaluation protocols use them.

A sample is a clip tensor `(M, 3, T, J)`: M person slots, an absent person all zeros. Persons are
folded into the batch and encoded one per row; an absent person gets a zero feature (and costs no
compute); the per-person features are concatenated and the result L2-normalised (the authors'
kNN/linear feature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def person_presence(clips: torch.Tensor) -> torch.Tensor:
    """(B, M) bool: the person slot holds any non-zero coordinate."""
    return clips.flatten(2).ne(0).any(dim=2)


def encode_persons(encoder: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """(B, M, 3, T, J) -> (B, M, D) per-person features, zeros for absent persons.

    Only the present persons go through the encoder; the zero rows are written around them, so this
    also serves training (gradients flow to the encoded rows).
    """
    B, M = clips.shape[:2]
    present = person_presence(clips).reshape(-1)
    encoded = encoder(clips.reshape(B * M, *clips.shape[2:])[present])
    out = encoded.new_zeros(B * M, encoded.shape[1]).index_put((present.nonzero()[:, 0],), encoded)
    return out.reshape(B, M, -1)


def extract_features(
    encoder: nn.Module,
    clips: torch.Tensor,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """(N, M, 3, T, J) clips -> (N, M * D) L2-normalised float32 features on the CPU.

    The encoder runs in eval mode (its previous mode is restored afterwards) under inference mode. A
    sample with no person present gives a zero row.
    """
    if clips.ndim != 5:
        raise ValueError(f"extract_features: expected clips (N, M, 3, T, J), got {tuple(clips.shape)}")
    batches = range(0, len(clips), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="features", unit="batch")
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in batches:
                batch = clips[start : start + batch_size].to(device, non_blocking=True)
                feats = encode_persons(encoder, batch).flatten(1).float()
                out.append(F.normalize(feats, dim=1).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)
