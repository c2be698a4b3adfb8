"""End-to-end NTU ingestion speed: `slim.data.ingest` vs a straightforward line-by-line parser.

    python benchmarks/ingest.py --copies 300

Copies the bundled raw `.skeleton` files `--copies` times into a temporary folder (each copy gets its
own replication number RNNN, so sample ids stay unique), then times raw files -> Parquet on disk for
both on the same files in one run (best of `--repeat` alternating runs: the machine may be shared),
checks they wrote the same joints, and writes the figures to benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from slim.data import schema  # noqa: E402
from slim.data.ingest import DATASET_FILE, ingest  # noqa: E402
from slim.data.sequence import SkeletonSequence  # noqa: E402

NTU_RAW = REPO_ROOT.parent / "shared" / "data" / "ntu" / "raw"


def make_corpus(raw: Path, dest: Path, copies: int) -> list[Path]:
    """`copies` copies of every raw file, renamed to replication 1..copies."""
    if not 1 <= copies <= 999:
        raise SystemExit("--copies must be in 1..999 (the replication field has three digits)")
    dest.mkdir(parents=True)
    files = []
    for source in sorted(raw.glob("*.skeleton")):
        for k in range(1, copies + 1):
            target = dest / f"{source.stem[:13]}{k:03d}{source.stem[16:]}.skeleton"
            shutil.copyfile(source, target)
            files.append(target)
    return files


def naive_read(path: Path) -> SkeletonSequence:
    """The straightforward parser: split each line, float() x/y/z, build the arrays."""
    lines = path.read_text().splitlines()
    num_frames, i, slots, records = int(lines[0]), 1, {}, []
    for frame in range(num_frames):
        num_bodies = int(lines[i])
        i += 1
        for _ in range(num_bodies):
            slot = slots.setdefault(lines[i].split()[0], len(slots))
            num_joints = int(lines[i + 1])
            i += 2
            xyz, state = [], []
            for line in lines[i : i + num_joints]:
                values = line.split()
                xyz.append((float(values[0]), float(values[1]), float(values[2])))
                state.append(int(values[11]))
            records.append((frame, slot, xyz, state))
            i += num_joints
    joints = np.full((num_frames, len(slots), 25, 3), np.nan, np.float32)
    tracking_state = np.zeros((num_frames, len(slots), 25), np.uint8)
    for frame, slot, xyz, state in records:
        joints[frame, slot] = xyz
        tracking_state[frame, slot] = state
    stem = path.stem
    action = int(stem[17:20])
    return SkeletonSequence(
        sample_id=stem, dataset="ntu", layout="ntu25", label=action - 1, action=f"A{action:03d}",
        subject=int(stem[9:12]), view=int(stem[5:8]), setup=int(stem[1:4]), replication=int(stem[13:16]),
        joints=joints, tracking_state=tracking_state,
    )  # fmt: skip


def naive_ingest(files: list[Path], out: Path) -> None:
    sequences = sorted((naive_read(f) for f in files), key=lambda s: s.sample_id)
    table = schema.sequences_to_table(
        sequences, [f"{s.sample_id}.skeleton" for s in sequences], [""] * len(sequences)
    )
    out.mkdir(parents=True)
    pq.write_table(table, out / DATASET_FILE)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--copies", type=int, default=300, help="copies of each of the bundled files (1..999)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="processes for slim's ingest (0 = one per core)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each, alternating; the best is reported"
    )
    parser.add_argument("--raw", type=Path, default=NTU_RAW, help="folder of raw .skeleton files to copy")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "ingest.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="slim-ingest-bench-") as tmp:
        tmp = Path(tmp)
        files = make_corpus(args.raw, tmp / "src", args.copies)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        naive_runs, slim_runs = [], []
        for _ in range(args.repeat):  # alternate, so that both see the same machine load
            shutil.rmtree(tmp / "naive", ignore_errors=True)
            naive_runs.append(timed(lambda: naive_ingest(files, tmp / "naive")))
            slim_runs.append(
                timed(
                    lambda: ingest(
                        "ntu", tmp / "src", tmp / "slim", workers=args.workers or None, progress=False
                    )
                )
            )
        naive_s, slim_s = min(naive_runs), min(slim_runs)
        same = pq.read_table(
            tmp / "slim" / DATASET_FILE, columns=["sample_id", "joints", "tracking_state"]
        ).equals(
            pq.read_table(tmp / "naive" / DATASET_FILE, columns=["sample_id", "joints", "tracking_state"])
        )
    if not same:
        raise SystemExit("the two ingests wrote different data")

    def figures(seconds: float) -> dict:
        return {
            "seconds": round(seconds, 3),
            "files_per_s": round(len(files) / seconds, 1),
            "mb_per_s": round(megabytes / seconds, 2),
        }

    result = {
        "command": f"python benchmarks/ingest.py --copies {args.copies} --workers {args.workers} --repeat {args.repeat}",
        "files": len(files),
        "megabytes": round(megabytes, 1),
        "cores": len(os.sched_getaffinity(0)),
        "workers": args.workers or len(os.sched_getaffinity(0)),
        "slim": figures(slim_s),
        "line_by_line": figures(naive_s),
        "speedup": round(naive_s / slim_s, 2),
        "runs_s": {
            "slim": [round(t, 3) for t in slim_runs],
            "line_by_line": [round(t, 3) for t in naive_runs],
        },
        "outputs_equal": same,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
