"""End-to-end fine-tuning of an encoder with a linear head on labelled clips.

One loop serves the semi-supervised (1%/10% labels), full fine-tuning and supervised-from-scratch
protocols: AdamW, linear warm-up then cosine lr per step, optional gradient clipping, optional
fp16 autocast (CUDA only; ignored elsewhere so one config serves CPU and GPU runs). Shuffling and
the augmentation hook draw from one seeded `torch.Generator`; randomness inside the encoder itself
(dropout) is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slim.evaluation.features import encode_persons
from slim.evaluation.metrics import ClassificationResult, topk_accuracy
from slim.schedules import cosine_schedule

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: int = 0
    weight_decay: float = 0.05
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    amp: bool = False
    eval_batch_size: int = 128
    seed: int = 0


class ClipClassifier(nn.Module):
    """Encoder per person (absent persons zero), features concatenated over persons, linear head.

    Input (B, M, 3, T, J); output (B, num_classes) logits.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        num_persons: int,
        num_classes: int,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(feature_dim * num_persons, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01, generator=generator)
        nn.init.zeros_(self.head.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(encode_persons(self.encoder, clips).flatten(1))


def predict_logits(
    model: nn.Module, clips: torch.Tensor, batch_size: int = 128, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(N, num_classes) float32 CPU logits, in eval mode (the previous mode is restored)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(clips), batch_size):
                out.append(model(clips[start : start + batch_size].to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def finetune(
    encoder: nn.Module,
    train_clips: torch.Tensor,
    train_labels: torch.Tensor,
    test_clips: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    cfg: FinetuneConfig = FinetuneConfig(),
    device: str | torch.device = "cpu",
    augment: Augment | None = None,
    feature_dim: int | None = None,
) -> tuple[ClipClassifier, ClassificationResult]:
    """Fine-tune `encoder` (modified in place) with a new head on (N, M, 3, T, J) clips.

    `feature_dim` defaults to `encoder.feature_dim`. `augment(batch, generator)` is applied to each
    CPU training batch before it moves to `device`. Returns the trained classifier (eval mode) and
    its test scores with the mean training loss of each epoch.
    """
    device = torch.device(device)
    if train_clips.ndim != 5 or len(train_clips) != len(train_labels):
        raise ValueError(
            f"finetune: expected (N, M, 3, T, J) clips and N labels, got {tuple(train_clips.shape)} "
            f"and {len(train_labels)}"
        )
    feature_dim = feature_dim or getattr(encoder, "feature_dim", None)
    if feature_dim is None:
        raise ValueError("finetune: pass feature_dim (the encoder has no feature_dim attribute)")
    generator = torch.Generator().manual_seed(cfg.seed)
    model = ClipClassifier(encoder, feature_dim, train_clips.shape[1], num_classes, generator).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(train_clips) // cfg.batch_size)
    lrs = cosine_schedule(
        cfg.lr, cfg.min_lr, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    )
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    labels = train_labels.long()
    history, step = [], 0
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train_clips), generator=generator)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x = train_clips[idx]
            if augment is not None:
                x = augment(x, generator)
            x, y = x.to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            total += loss.item() * len(idx)
            step += 1
        history.append(total / len(train_clips))
    model.eval()
    logits = predict_logits(model, test_clips, cfg.eval_batch_size, device)
    result = ClassificationResult(
        top1=topk_accuracy(logits, test_labels, 1),
        top5=topk_accuracy(logits, test_labels, 5) if num_classes > 5 else None,
        predictions=logits.argmax(1).numpy(),
        loss_history=history,
    )
    return model, result
