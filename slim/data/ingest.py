"""Raw skeleton files -> one Parquet dataset, with a quarantine report of the malformed files.

`ingest()` walks a source folder for one format, parses the files in worker processes (chunks of
files per task), drops every malformed file into `quarantine.jsonl` with the reason, and writes
`sequences.parquet` (rows sorted by sample id) and `summary.json` into the output folder, each
atomically. A quarantine entry is one JSON object per line: `path` (relative to the source
folder), `line` (1-based, or null), `reason`, `sha256` of the file. Files are read in sorted path
order; of two files with the same sample id, the later one is quarantined. The stage fails
(`TooManyBadFilesError`) when the share of bad files exceeds a bound, after still writing the
quarantine report. The whole dataset is held in memory before the sorted write (about 4 bytes per
stored coordinate).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from slim.atomic import atomic_path
from slim.data import schema
from slim.data.readers import MalformedSkeletonError
from slim.data.readers.npz import parse_npz
from slim.data.readers.ntu import parse_ntu
from slim.data.readers.ucla import parse_ucla
from slim.data.sequence import SkeletonSequence

log = logging.getLogger(__name__)

DATASET_FILE = "sequences.parquet"
QUARANTINE_FILE = "quarantine.jsonl"
SUMMARY_FILE = "summary.json"
MIN_FILES_FOR_POOL = 16  # below this, starting worker processes costs more than it saves


@dataclass(frozen=True)
class SourceFormat:
    """A raw format: the file suffix to look for and the parser of one file's bytes into sequences."""

    name: str
    suffix: str
    parse: Callable[[bytes, Path], list[SkeletonSequence]]


def _one(parse: Callable[[bytes, Path], SkeletonSequence]) -> Callable[[bytes, Path], list[SkeletonSequence]]:
    return lambda data, path: [parse(data, path)]


FORMATS = {
    "ntu": SourceFormat("ntu", ".skeleton", _one(parse_ntu)),
    "nw-ucla": SourceFormat("nw-ucla", ".json", _one(parse_ucla)),
    "npz": SourceFormat("npz", ".npz", parse_npz),
}


class TooManyBadFilesError(ValueError):
    """More than `max_bad_fraction` of the source files are malformed."""


@dataclass
class FileResult:
    """What one source file gave: its sequences, or the reason it is quarantined."""

    path: str  # relative to the source folder, POSIX separators
    sha256: str
    sequences: list[SkeletonSequence]
    line: int | None = None
    reason: str | None = None

    def quarantine_entry(self) -> dict:
        return {"path": self.path, "line": self.line, "reason": self.reason, "sha256": self.sha256}


def get_format(name: str) -> SourceFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown raw format {name!r}; known: {', '.join(FORMATS)}") from None


def find_sources(src: Path, suffix: str) -> list[str]:
    """Files under `src` (recursively) ending in `suffix`, as sorted relative POSIX paths; dot-files skipped."""
    found = (
        p.relative_to(src).as_posix()
        for p in src.rglob(f"*{suffix}")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
    )
    return sorted(found)


def read_source(fmt: str, src: Path, rel: str) -> FileResult:
    """Read, hash and parse one file; a malformed (or unreadable) file gives a result with a reason."""
    path = src / rel
    try:
        data = path.read_bytes()
    except OSError as exc:
        return FileResult(rel, "", [], None, f"cannot read the file: {exc.strerror or exc}")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        return FileResult(rel, sha256, get_format(fmt).parse(data, path))
    except MalformedSkeletonError as exc:
        return FileResult(rel, sha256, [], exc.line, exc.reason)


def _read_chunk(fmt: str, src: Path, rels: Sequence[str]) -> list[FileResult]:
    return [read_source(fmt, src, rel) for rel in rels]


def read_sources(
    fmt: str, src: Path, rels: Sequence[str], *, workers: int | None = None, progress: bool = True
) -> list[FileResult]:
    """Parse `rels`, in worker processes where it pays (several workers and files); results in `rels` order.

    Callers running this from a script need the usual `if __name__ == "__main__":` guard: workers
    start from a fresh forkserver process, which imports the main module.
    """
    from tqdm import tqdm  # the one optional dependency of the library, only where a bar is drawn

    workers = workers or len(os.sched_getaffinity(0))
    bar = tqdm(total=len(rels), unit="file", desc=f"ingest {fmt}", disable=not progress)
    with bar:
        if workers <= 1 or len(rels) < MIN_FILES_FOR_POOL:
            results = []
            for rel in rels:
                results.append(read_source(fmt, src, rel))
                bar.update()
            return results
        # a few chunks per worker balance the load; chunks amortise the per-task pickling
        size = max(1, min(64, math.ceil(len(rels) / (4 * workers))))
        chunks = [rels[k : k + size] for k in range(0, len(rels), size)]
        by_path: dict[str, FileResult] = {}
        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=_pool_context()) as pool:
            for future in as_completed([pool.submit(_read_chunk, fmt, src, chunk) for chunk in chunks]):
                for result in future.result():
                    by_path[result.path] = result
                    bar.update()
        return [by_path[rel] for rel in rels]


def _pool_context():
    """forkserver: workers forked from a clean process, not from a parent that may run pyarrow threads."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def drop_duplicates(results: list[FileResult]) -> None:
    """Quarantine each file that repeats a sample id of an earlier file (in the given order), in place."""
    first_seen: dict[str, str] = {}
    for result in results:
        duplicate = next((s.sample_id for s in result.sequences if s.sample_id in first_seen), None)
        if duplicate is not None:
            result.reason = f"duplicate sample id {duplicate}: already read from {first_seen[duplicate]}"
            result.sequences = []
            continue
        first_seen.update((s.sample_id, result.path) for s in result.sequences)


def ingest(
    fmt: str,
    src: Path,
    out_dir: Path,
    *,
    max_bad_fraction: float = 0.0,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Ingest every `fmt` file under `src` into `out_dir`; return the summary (also written as summary.json).

    Raises TooManyBadFilesError, after writing quarantine.jsonl and summary.json (and removing any
    earlier sequences.parquet, which would no longer match them), when more than `max_bad_fraction`
    of the files are malformed.
    """
    src, out_dir = Path(src), Path(out_dir)
    source_format = get_format(fmt)
    rels = find_sources(src, source_format.suffix)
    if not rels:
        raise ValueError(f"no *{source_format.suffix} files under {src}")
    results = read_sources(fmt, src, rels, workers=workers, progress=progress)
    drop_duplicates(results)
    good = [r for r in results if r.reason is None]
    bad = [r for r in results if r.reason is not None]
    for result in bad:
        log.warning(
            "quarantined %s%s: %s",
            result.path,
            "" if result.line is None else f":{result.line}",
            result.reason,
        )

    summary = _summary(fmt, results, good, max_bad_fraction)
    out_dir.mkdir(parents=True, exist_ok=True)
    quarantine = "".join(json.dumps(r.quarantine_entry()) + "\n" for r in bad)
    if not summary["ok"]:
        _write_text(out_dir / QUARANTINE_FILE, quarantine)
        (out_dir / DATASET_FILE).unlink(missing_ok=True)
        _write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        raise TooManyBadFilesError(
            f"{len(bad)} of {len(results)} {fmt} files under {src} are malformed "
            f"({summary['bad_fraction']:.1%} > max_bad_fraction {max_bad_fraction:.1%}); "
            f"see {out_dir / QUARANTINE_FILE}"
        )
    rows = sorted(((s, r) for r in good for s in r.sequences), key=lambda row: row[0].sample_id)
    table = schema.sequences_to_table(
        [s for s, _ in rows], [r.path for _, r in rows], [r.sha256 for _, r in rows]
    )
    schema.write_dataset(
        table,
        out_dir / DATASET_FILE,
        {schema.META_SOURCE_SHA256: summary["source_sha256"], "slim.format": fmt},
    )
    # the report after the dataset and the summary last: a failed write leaves the old three files
    _write_text(out_dir / QUARANTINE_FILE, quarantine)
    _write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(fmt: str, results: list[FileResult], good: list[FileResult], max_bad_fraction: float) -> dict:
    sequences = [s for r in good for s in r.sequences]
    bad_fraction = 1 - len(good) / len(results)
    return {
        "format": fmt,
        "ok": bad_fraction <= max_bad_fraction,
        "files": len(results),
        "ingested_files": len(good),
        "quarantined_files": len(results) - len(good),
        "bad_fraction": bad_fraction,
        "max_bad_fraction": max_bad_fraction,
        "sequences": len(sequences),
        "frames": sum(s.num_frames for s in sequences),
        "labels": {str(k): v for k, v in sorted(Counter(s.label for s in sequences).items())},
        "schema_version": schema.SCHEMA_VERSION,
        "source_sha256": schema.sources_sha256(r.sha256 for r in good),
    }


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
