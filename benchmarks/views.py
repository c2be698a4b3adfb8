"""Throughput of SLiM view generation (crop + resample, augmentation, masking) on real NW-UCLA clips, per core.

    python benchmarks/views.py [--clips 256] [--batch 128] [--seconds 3]

Runs on one thread (`torch.set_num_threads(1)`), so the figures are clips per second per core.
Reported: `make_views` alone on collated clips (the training-step cost), the same plus the per-sample
numpy work of a data loader (`training_clip` + `collate_clips`), and a per-stage breakdown. Writes
`benchmarks/results/views.json` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slim.augment import Augment  # noqa: E402
from slim.data import transforms as T  # noqa: E402
from slim.data.readers.ucla import read_ucla_file  # noqa: E402
from slim.layouts import get_layout  # noqa: E402
from slim.masking import policy_masks  # noqa: E402
from slim.views import ViewConfig, collate_clips, crop_positions, gather_frames, make_views  # noqa: E402

TARGET_CLIPS_PER_S = 250.0
DATA = Path(os.environ.get("SLIM_SHARED_DATA", ROOT.parent / "shared" / "data")) / "nw-ucla" / "all_sqe"
OUT = ROOT / "benchmarks" / "results" / "views.json"


def timed(fn, seconds: float) -> dict[str, float]:
    """Median wall and CPU seconds per call of fn, calling it for about `seconds` (after two warm-ups).

    CPU time (this process) is the per-core cost even when other jobs share the cores; wall time
    is what a dedicated core would also see only when the machine is otherwise idle.
    """
    fn(), fn()
    wall, cpu, start = [], [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(wall) < 5:
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=256, help="real clips loaded (spread over the dataset)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure")
    args = parser.parse_args()
    torch.set_num_threads(1)

    layout, config = get_layout("ucla20"), ViewConfig()
    files = sorted(DATA.glob("*.json"))
    files = files[:: max(1, len(files) // args.clips)][: args.clips]
    prepared = [T.prepare_clip(read_ucla_file(f).joints, layout) for f in files]
    rng = np.random.default_rng(0)
    clips, lengths = collate_clips(
        [torch.from_numpy(T.training_clip(c, rng)) for c in prepared[: args.batch]]
    )
    generator = torch.Generator().manual_seed(0)
    augment = Augment(layout, config.augment)
    local_pos = crop_positions(lengths, config, generator)[1]
    crops = gather_frames(
        clips, lengths, [crop_positions(lengths, config, generator)[0], *local_pos.values()]
    )
    policies = [config.global_mask] + [config.local_mask] * len(local_pos)

    def loader_batch() -> None:
        batch = [torch.from_numpy(T.training_clip(c, rng)) for c in prepared[: args.batch]]
        make_views(*collate_clips(batch), layout, config, generator)

    def crop_resample() -> None:
        global_pos, local_pos = crop_positions(lengths, config, generator)
        gather_frames(clips, lengths, [global_pos, *local_pos.values()])

    stages = {
        "crop_resample": crop_resample,
        "augment": lambda: [augment(c, generator) for c in crops],
        "masking": lambda: [
            policy_masks(c.shape[0], c.shape[2] // config.patch_size, layout, policy, generator)
            for c, policy in zip(crops, policies, strict=True)
        ],
    }
    views = timed(lambda: make_views(clips, lengths, layout, config, generator), args.seconds)
    loader = timed(loader_batch, args.seconds)
    breakdown = {name: timed(fn, args.seconds / 3) for name, fn in stages.items()}

    def rate(seconds: float) -> float:
        return round(args.batch / seconds, 1)

    result = {
        "benchmark": "views",
        "command": "python benchmarks/views.py",
        "dataset": "nw-ucla (real clips, prepared, one person, ping-pong padded to >= 64 frames)",
        "clips_loaded": len(prepared),
        "batch_size": args.batch,
        "clip_frames": {
            "min": int(lengths.min()),
            "median": int(lengths.median()),
            "max": int(lengths.max()),
        },
        "views_per_clip": config.num_globals * (1 + len(config.local_frames)),
        "threads": torch.get_num_threads(),
        "clips_per_s_per_core": rate(views["cpu"]),
        "clips_per_s_per_core_wall": rate(views["wall"]),
        "clips_per_s_per_core_with_loader_work": rate(loader["cpu"]),
        "ms_per_batch_cpu": {
            "make_views": round(1000 * views["cpu"], 2),
            "make_views_with_loader_work": round(1000 * loader["cpu"], 2),
            **{name: round(1000 * t["cpu"], 2) for name, t in breakdown.items()},
        },
        "target_clips_per_s_per_core": TARGET_CLIPS_PER_S,
        "meets_target": rate(views["cpu"]) >= TARGET_CLIPS_PER_S,
        "torch": torch.__version__,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "note": (
            "per-core figures are medians of CPU time of this one-thread process; the wall figure is lower "
            "when other jobs share the cores (see load_average_1min)"
        ),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(OUT)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
