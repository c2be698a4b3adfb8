"""Training checkpoints: atomic saves, `weights_only` loads, and every RNG state needed to resume exactly."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slim.atomic import atomic_path

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def rng_state(generators: dict[str, torch.Generator | np.random.Generator] | None = None) -> dict[str, Any]:
    """Global torch/CUDA/Python RNG states plus those of the named explicit generators."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "generators": {},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in (generators or {}).items():
        state["generators"][name] = gen.get_state() if isinstance(gen, torch.Generator) else gen.bit_generator.state
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator | np.random.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (generators or {}).items():
        saved = state["generators"][name]
        if isinstance(gen, torch.Generator):
            gen.set_state(saved)
        else:
            gen.bit_generator.state = saved


def _as_tuple(value: Any) -> Any:
    """`random.setstate` wants tuples; a weights-only load may hand back lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: a crash mid-save leaves the previous checkpoint intact."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`: tensors and plain containers only, never arbitrary pickles."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step in `directory`, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.iterdir() if CHECKPOINT_PATTERN.match(p.name))
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    found = sorted(p for p in Path(directory).iterdir() if CHECKPOINT_PATTERN.match(p.name))
    for old in found[:-keep] if keep > 0 else []:
        old.unlink()
