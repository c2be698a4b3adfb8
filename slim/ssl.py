"""SLiM pretraining: student and EMA teacher, each an encoder with a CLS head and a patch head.

One training step (see `SLiM.forward`):
- teacher (no grad, eval mode): the unmasked global views -> CLS prototypes of every global view and
  patch prototypes at the positions the student has masked; both Sinkhorn-centred into targets.
- student: the masked global views in one encoder call, each local length in one call; the local
  views are masked too (their masks come with the views, as in the paper and the authors' code),
  which makes the global-local term harder without needing patch targets for them.
- losses: DINO over (teacher global, student view) pairs on CLS prototypes (L_GLCL), iBOT on the
  masked global tokens (L_MFM), and KoLeo on the student's global CLS features.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from slim.encoder import EncoderConfig, SLiMEncoder
from slim.heads import DINOHead
from slim.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from slim.monitor import entropy_fraction
from slim.teacher import ema_update
from slim.views import Views


@dataclass
class SLiMConfig:
    """Defaults are the paper's; shrink `encoder`, the head sizes and `num_prototypes` for CPU runs."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_prototypes: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    student_temp: float = 0.1
    sinkhorn_iterations: int = 3
    dino_weight: float = 1.0
    mfm_weight: float = 1.0
    koleo_weight: float = 0.1
    mask_local_views: bool = True


class SLiM(nn.Module):
    """Student/teacher pair with the three SLiM losses. `student` and `teacher` are ModuleDicts with
    the same keys (`encoder`, `cls_head`, `patch_head`); the teacher only ever changes by
    `update_teacher`."""

    def __init__(self, cfg: SLiMConfig) -> None:
        super().__init__()
        self.cfg = cfg

        def head() -> DINOHead:
            return DINOHead(
                cfg.encoder.dim,
                cfg.num_prototypes,
                cfg.head_hidden_dim,
                cfg.head_bottleneck_dim,
                cfg.head_layers,
            )

        self.student = nn.ModuleDict(
            {"encoder": SLiMEncoder(cfg.encoder), "cls_head": head(), "patch_head": head()}
        )
        self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.dino_loss = DINOLoss(cfg.student_temp, cfg.sinkhorn_iterations)
        self.ibot_loss = iBOTPatchLoss(cfg.student_temp, cfg.sinkhorn_iterations)
        self.koleo_loss = KoLeoLoss()

    @property
    def student_encoder(self) -> SLiMEncoder:
        """The encoder to export after pretraining (the student's, as in DINO/iBOT/SLiM)."""
        return self.student["encoder"]

    def train(self, mode: bool = True) -> SLiM:
        """Switch the student; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student (call after the optimiser step)."""
        ema_update(self.teacher, self.student, momentum)

    @torch.no_grad()
    def _teacher_targets(
        self, global_views: torch.Tensor, batch: int, masked_index: torch.Tensor, teacher_temp: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, B, K) CLS targets of the global views, (M, K) patch targets at the masked tokens."""
        feats = self.teacher["encoder"].forward_features(global_views)
        cls_scores = self.teacher["cls_head"](feats["cls"]).unflatten(0, (-1, batch))
        patch_scores = self.teacher["patch_head"](feats["patch"].flatten(0, 1)[masked_index])
        return (
            self.dino_loss.sinkhorn_knopp_teacher(cls_scores, teacher_temp),
            self.ibot_loss.sinkhorn_knopp_teacher(patch_scores, teacher_temp),
        )

    def forward(self, views: Views, teacher_temp: float) -> dict[str, torch.Tensor]:
        """Losses for one batch of views: `loss` (the weighted total to backpropagate) and the
        unweighted terms `dino`, `ibot`, `koleo`; plus the collapse monitor (no gradient): the mean
        entropy of the teacher's CLS and patch targets and of the student's global CLS predictions,
        each as a fraction of ln K (1 = uniform, nothing to learn; 0 = one prototype per row).

        views.global_views (G*B, 3, T, J) view-major, views.global_masks (G*B, T//p, J) (True = masked;
        rows with no masked token are fine); views.local_views / local_masks: {frames: (n*B, 3, frames, J)
        view-major}, one encoder call per length.
        """
        cfg, encoder, batch = self.cfg, self.student["encoder"], views.batch_size
        masks = views.global_masks
        # Flat indices of the masked global tokens, shared by student and teacher, so the heads only
        # run on tokens that carry loss.
        masked_index = masks.flatten().nonzero().squeeze(1)
        cls_targets, patch_targets = self._teacher_targets(
            views.global_views, batch, masked_index, teacher_temp
        )

        glob = encoder.forward_features(views.global_views, masks)
        local_cls = [
            encoder.forward_features(x, views.local_masks[frames] if cfg.mask_local_views else None)["cls"]
            for frames, x in views.local_views.items()
        ]
        cls_scores = self.student["cls_head"](torch.cat([glob["cls"], *local_cls])).unflatten(0, (-1, batch))
        patch_scores = self.student["patch_head"](glob["patch"].flatten(0, 1)[masked_index])

        dino = self.dino_loss(cls_scores, cls_targets)
        ibot = self.ibot_loss(patch_scores, patch_targets, masks)
        koleo = torch.stack([self.koleo_loss(c) for c in glob["cls"].split(batch)]).mean()
        loss = cfg.dino_weight * dino + cfg.mfm_weight * ibot + cfg.koleo_weight * koleo
        with torch.no_grad():
            student_cls = torch.softmax(cls_scores[: cls_targets.shape[0]].float() / cfg.student_temp, dim=-1)
            monitor = {
                "teacher_cls_entropy": entropy_fraction(cls_targets),
                "teacher_patch_entropy": entropy_fraction(patch_targets),
                "student_cls_entropy": entropy_fraction(student_cls),
            }
        return {"loss": loss, "dino": dino, "ibot": ibot, "koleo": koleo, **monitor}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups over the student's trainable parameters.

        Matrices decay; biases, norms and the tokens/embeddings a module lists in `no_weight_decay()`
        do not. The heads' prototype layers get their own group flagged `is_last_layer`, so a schedule
        can hold them still early on (`slim.schedules.StepValues.apply_to` reads `is_last_layer` and
        `wd_multiplier`).
        """
        exempt = {
            f"{prefix}.{name}" if prefix else name
            for prefix, module in self.student.named_modules()
            if hasattr(module, "no_weight_decay")
            for name in module.no_weight_decay()
        }
        groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            last = ".last_layer." in name
            decays = p.ndim >= 2 and name not in exempt
            groups.setdefault((last, 1.0 if decays else 0.0), []).append(p)
        return [
            {
                "params": params,
                "is_last_layer": last,
                "wd_multiplier": mult,
                "weight_decay": weight_decay * mult,
            }
            for (last, mult), params in groups.items()
        ]
