"""DVC stage `ingest`: raw skeleton files -> data/parquet/<dataset>/ (see slim.data.ingest)."""

from __future__ import annotations

from pathlib import Path

from slim.data.ingest import ingest


def run(
    fmt: str, src: Path, out_dir: Path, max_bad_fraction: float, workers: int | None, *, progress: bool = True
) -> dict:
    """Ingest `src` into `out_dir` (sequences.parquet, quarantine.jsonl, summary.json); return the summary.

    `workers` None or 0 means one process per available core. Raises TooManyBadFilesError (a
    ValueError) when more than `max_bad_fraction` of the files are malformed.
    """
    return ingest(
        fmt, Path(src), Path(out_dir), max_bad_fraction=max_bad_fraction, workers=workers, progress=progress
    )
