"""Linear probe: one `nn.Linear` trained on frozen features, cosine lr, deterministic given a seed.

The layer starts at zero (the problem is convex, so nothing is lost) and mini-batches are drawn with
an explicit generator: the seed alone fixes the result on a given device. Features may be
standardised with the training set's mean and std (no BatchNorm layer to carry around).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slim.evaluation.metrics import ClassificationResult, topk_accuracy
from slim.schedules import cosine_schedule


@dataclass(frozen=True)
class LinearProbeConfig:
    epochs: int = 100
    lr: float = 1e-2
    min_lr: float = 0.0
    weight_decay: float = 0.0
    batch_size: int | None = 256  # None: full batch
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9)
    standardize: bool = True
    seed: int = 0


class LinearProbe(nn.Module):
    """Standardise (frozen statistics) then one linear layer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(len(mean), num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)


def _optimizer(cfg: LinearProbeConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ValueError(f"linear probe: unknown optimizer {cfg.optimizer!r}; known: adamw, sgd")


def train_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: LinearProbeConfig = LinearProbeConfig(),
    device: str | torch.device = "cpu",
) -> tuple[LinearProbe, list[float]]:
    """Fit a probe on (N, D) features; returns it (in eval mode) and the mean loss of each epoch."""
    x, y = features.float().to(device), labels.long().to(device)
    if cfg.standardize:
        mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    else:
        mean, std = x.new_zeros(x.shape[1]), x.new_ones(x.shape[1])
    probe = LinearProbe(mean, std, num_classes).to(device)
    optimizer = _optimizer(cfg, probe.parameters())
    batch = cfg.batch_size or len(x)
    steps_per_epoch = -(-len(x) // batch)
    lrs = cosine_schedule(cfg.lr, cfg.min_lr, cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    history, step = [], 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            step += 1
        history.append(total / len(x))
    return probe.eval(), history


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    cfg: LinearProbeConfig = LinearProbeConfig(),
    device: str | torch.device = "cpu",
) -> ClassificationResult:
    """Train on the training features, score the test features (top-5 only with more than 5 classes)."""
    probe, history = train_linear_probe(train_features, train_labels, num_classes, cfg, device)
    with torch.inference_mode():
        logits = probe(test_features.float().to(device)).cpu()
    return ClassificationResult(
        top1=topk_accuracy(logits, test_labels, 1),
        top5=topk_accuracy(logits, test_labels, 5) if num_classes > 5 else None,
        predictions=logits.argmax(1).numpy(),
        loss_history=history,
    )
