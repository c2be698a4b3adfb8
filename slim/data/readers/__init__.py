"""Readers of raw skeleton formats into `SkeletonSequence` records.

One module per format (`ntu`, `ucla`, `npz`); each exposes `parse_*(data: bytes, path)` (what the
ingestion workers call, on bytes already read and hashed) and `read_*_file(path)`. Every problem
with a file's content is raised as one `MalformedSkeletonError` naming the file, the line (text
formats) and what is wrong.
"""

from __future__ import annotations

from pathlib import Path


class MalformedSkeletonError(ValueError):
    """A source file that cannot be read losslessly: `line` is 1-based, None where lines do not apply."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")
