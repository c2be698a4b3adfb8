"""Encoder registry: build an inference encoder by name for a skeleton layout.

Every encoder built here takes (B, 3, T, J) clips with T = its `num_frames` and returns (B,
`feature_dim`) clip features, one person per row.
"""

from __future__ import annotations

from dataclasses import fields

from torch import nn

from slim.encoder import EncoderConfig, SLiMEncoder
from slim.layouts import Layout, get_layout
from slim.mae import MAEConfig, MAEEncoder

ENCODERS: dict[str, tuple[type, type[nn.Module]]] = {
    "slim": (EncoderConfig, SLiMEncoder),
    "mae": (MAEConfig, MAEEncoder),
}


def build(name: str, layout: str | Layout, **overrides) -> nn.Module:
    """Build encoder `name` ("slim" or "mae") for `layout`; keyword overrides set config fields,
    e.g. `build("slim", "ucla20", dim=128, depth=4, heads=4)` for a CPU-sized encoder."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    config_cls, model_cls = ENCODERS[name]
    layout = get_layout(layout) if isinstance(layout, str) else layout
    known = {f.name for f in fields(config_cls)} - {"num_joints"}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(
            f"unknown {name} config field(s) {sorted(unknown)}; known: {', '.join(sorted(known))}"
        )
    return model_cls(config_cls(num_joints=layout.num_joints, **overrides))
