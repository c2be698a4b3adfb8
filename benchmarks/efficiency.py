"""Inference and pretraining cost of the SLiM encoder against the MAE baseline, on this machine.

    python benchmarks/efficiency.py [--layout ntu25] [--batch 16] [--compile]

Writes benchmarks/results/efficiency.json: per encoder GFLOPs per clip, parameters, clips/s, achieved
GFLOP/s and its fraction of this machine's own fp32 matmul rate; FLOP and wall-time ratios under
three person-counting protocols; the cost of one pretraining step of each method; machine facts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slim.atomic import atomic_write_text  # noqa: E402
from slim.flops import (  # noqa: E402
    inference_report,
    keep_freed_memory,
    measure_matmul_gflops,
    pretraining_step_report,
)
from slim.models import build  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "efficiency.json"

# Mean persons per sample when only persons present are encoded: in NTU-60, actions A50-A60 (11 of
# 60 classes, near-balanced) are two-person interactions; NW-UCLA has one actor per clip.
PERSONS_PRESENT = {"ntu25": (1 + 11 / 60, "NTU-60: 11 of 60 near-balanced classes are two-person"),
                   "ucla20": (1.0, "NW-UCLA: one person per clip")}  # fmt: skip


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "load_average_1_5_15": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", default="ntu25", choices=sorted(PERSONS_PRESENT))
    parser.add_argument("--batch", type=int, default=16, help="clips per inference call")
    parser.add_argument("--repeats", type=int, default=10, help="timed inference calls per model")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd encoders")
    parser.add_argument("--step-batch", type=int, default=4, help="samples per timed pretraining step")
    parser.add_argument("--no-step", action="store_true", help="skip the pretraining-step cost")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--release-memory", action="store_true", help="leave glibc malloc returning freed memory to the OS"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.time()
    kept = not args.release_memory and keep_freed_memory()
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold weights: prepacked matmuls for inference
    encoders = {name: build(name, args.layout).eval() for name in ("slim", "mae")}
    persons, persons_source = PERSONS_PRESENT[args.layout]
    report = {
        "layout": args.layout,
        "machine": machine_facts(),
        "matmul_gflops_per_s": {
            "fp32": measure_matmul_gflops(),
            "bf16_512": measure_matmul_gflops(size=512, repeats=3, dtype=torch.bfloat16),
            "fp32_512": measure_matmul_gflops(size=512, repeats=3),
            "note": "square matmuls (2048 unless suffixed), median; bf16 shows whether low precision pays here",
        },
        "malloc_keeps_freed_memory": kept,
        "flops_convention": "torch FlopCounterMode, 2 FLOPs per multiply-add, attention counted on the MATH "
        "SDPA backend; elementwise ops (norms, activations, RoPE) not counted",
        "persons_present": {"mean": persons, "source": persons_source},
        "inference": {"eager": inference_report(encoders, args.batch, persons, repeats=args.repeats)},
    }
    if args.compile:
        report["inference"]["compiled"] = inference_report(
            encoders, args.batch, persons, repeats=args.repeats, compile=True
        )
    if not args.no_step:
        report["pretraining_step"] = pretraining_step_report(args.layout, batch=args.step_batch)
    report["machine"]["load_average_after"] = list(os.getloadavg())
    report["seconds"] = time.time() - started
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print_summary(report)
    print(f"wrote {args.out}")
    return report


def print_summary(report: dict) -> None:
    for mode, r in report["inference"].items():
        for name, m in r["models"].items():
            print(
                f"{mode:8s} {name:4s} {m['gflops_per_clip']:6.2f} GFLOPs/clip {m['clips_per_s']:7.1f} clips/s "
                f"{m['achieved_gflops_per_s']:6.1f} GFLOP/s ({100 * m['fraction_of_matmul_peak']:.0f}% of matmul)"
            )
        for proto, p in r["protocols"].items():
            print(
                f"{mode:8s} {proto:18s} FLOPs x{p['flop_ratio_mae_over_slim']:.2f}  "
                f"wall x{p['wall_time_ratio_mae_over_slim']:.2f}"
            )
        print(f"{mode:8s} matmul {r['matmul_gflops_per_s']:.1f} GFLOP/s (timed in the same rounds)")
    step = report.get("pretraining_step")
    if step:
        for name in ("slim_with_heads", "slim_encoders_only", "mae"):
            print(
                f"pretraining step {name:18s} {step[name]['gflops_per_sample']:6.1f} GFLOPs "
                f"{step[name]['ms_per_sample']:6.0f} ms per sample"
            )


if __name__ == "__main__":
    main()
