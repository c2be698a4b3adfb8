"""The pretrained encoder as a file of its own: weights plus the plain-dict config that rebuilds it.

`encoder.pt` holds `{"method", "layout", "config", "state_dict"}`, tensors and plain containers
only, so it loads with `weights_only=True`; `load_encoder` rebuilds the module through the encoder
registry (`slim.models.build`) and loads the weights strictly.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from torch import nn

from slim.checkpoint import load_checkpoint, save_checkpoint
from slim.models import build


def save_encoder(path: str | Path, method: str, layout: str, encoder: nn.Module) -> Path:
    """Write the encoder's weights and config atomically; `encoder.cfg` must be its config dataclass."""
    state = {
        "method": method,
        "layout": layout,
        "config": asdict(encoder.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
    }
    return save_checkpoint(path, state)


def load_encoder(path: str | Path, map_location: str = "cpu") -> nn.Module:
    """Rebuild the encoder saved by `save_encoder`, in eval mode."""
    state = load_checkpoint(path, map_location)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
    config.pop("num_joints", None)  # the layout sets it
    config.setdefault("normalise_view", False)  # files from before view normalisation saw camera-view clips
    encoder = build(state["method"], state["layout"], **config)
    encoder.load_state_dict(state["state_dict"])
    return encoder.eval()
