"""Where things live: the repo root and config paths resolved against it."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_existing(path: str | Path, *, what: str, kind: str = "dir") -> Path:
    """Resolve a config path against the repo root and check it exists as a `kind` ("dir" or "file")."""
    resolved = (REPO_ROOT / Path(path).expanduser()).resolve()
    ok = resolved.is_dir() if kind == "dir" else resolved.is_file()
    if not ok:
        raise FileNotFoundError(f"{what}: {kind} {resolved} (from {str(path)!r}) does not exist")
    return resolved
