"""SLiM losses, one small module per term; temperatures come in per call from the schedules."""

from slim.losses.dino import DINOLoss, sinkhorn_knopp
from slim.losses.ibot import iBOTPatchLoss, masked_token_weights
from slim.losses.koleo import KoLeoLoss

__all__ = ["DINOLoss", "KoLeoLoss", "iBOTPatchLoss", "masked_token_weights", "sinkhorn_knopp"]
