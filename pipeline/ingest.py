"""DVC stage `ingest@<dataset>`: raw skeleton files -> data/parquet/<dataset>/ (see slim.data.ingest).

Tracked as MLflow run `ingest@<dataset>`: its summary counts as metrics, summary.json and the
quarantine report as artifacts (also when too many files are malformed: the report says which), and
the md5 of the Parquet it wrote as `dvc.data_hash`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from slim.data.ingest import DATASET_FILE, QUARANTINE_FILE, SUMMARY_FILE, TooManyBadFilesError, ingest

FORMAT_DATASETS = {"ntu": "ntu", "nw-ucla": "nw-ucla", "npz": "ntu"}  # the `dataset` its readers write


def _log_reports(out_dir: Path) -> None:
    tracking.log_metrics_file(out_dir / SUMMARY_FILE, skip=("labels",))
    tracking.log_artifacts([out_dir / SUMMARY_FILE, out_dir / QUARANTINE_FILE])


def run(
    fmt: str, src: Path, out_dir: Path, max_bad_fraction: float, workers: int | None, *, progress: bool = True
) -> dict:
    """Ingest `src` into `out_dir` (sequences.parquet, quarantine.jsonl, summary.json); return the summary.

    `workers` None or 0 means one process per available core. Raises TooManyBadFilesError (a
    ValueError) when more than `max_bad_fraction` of the files are malformed.
    """
    out_dir = Path(out_dir)
    dataset = FORMAT_DATASETS.get(fmt, fmt)
    params = {"format": fmt, "src": str(src), "max_bad_fraction": max_bad_fraction, "workers": workers or 0}
    with tracking.stage_run(f"ingest@{dataset}", dataset=dataset, params=params):
        try:
            summary = ingest(
                fmt, Path(src), out_dir, max_bad_fraction=max_bad_fraction, workers=workers, progress=progress
            )
        except TooManyBadFilesError:
            _log_reports(out_dir)
            raise
        _log_reports(out_dir)
        tracking.set_tags({"dvc.data_hash": tracking.data_hash(out_dir / DATASET_FILE)})
    return summary
