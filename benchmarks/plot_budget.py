"""Accuracy against training minutes for every method of one profile, as one PNG beside the JSON.

    python benchmarks/plot_budget.py [--profile cpu-long]

Reads benchmarks/results/budget-<method>-<profile>.json (written by benchmarks/budget.py for slim,
mae and supervised) and draws kNN-1 and linear top-1 of each method's encoder against the minutes it
trained, with the raw-joints anchor (grey) and each method's random-init encoder (dotted, the
method's colour: SLiM's and MAE's encoders differ) as horizontal lines. Writes
benchmarks/results/budget-<profile>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slim.visualize import save_figure  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
METHODS = {"slim": "SLiM (student)", "mae": "MAE", "supervised": "supervised (same encoder, all labels)"}
PANELS = {"knn_top1@1": "kNN-1 top-1", "linear_top1": "linear probe top-1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu-long")
    args = parser.parse_args()
    reports = {
        m: json.loads(p.read_text())
        for m in METHODS
        if (p := RESULTS / f"budget-{m}-{args.profile}.json").is_file()
    }
    if not reports:
        sys.exit(f"error: no {RESULTS}/budget-*-{args.profile}.json: run benchmarks/budget.py first")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 4.6), sharey=True)
    raw = next(iter(reports.values()))["anchors"]["raw"]
    threads = sorted({r["config"]["threads"] for r in reports.values()})
    for ax, (key, title) in zip(axes, PANELS.items(), strict=True):
        for method, report in reports.items():
            curve = report["curve"]
            minutes = [p["pretrain_minutes"] for p in curve]
            (line,) = ax.plot(minutes, [100 * p["student"][key] for p in curve], marker="o", label=METHODS[method])
            if method == "supervised" and key == "linear_top1":
                ax.plot(minutes, [100 * p["classifier_top1"] for p in curve], marker="s", linestyle=":",
                        color=line.get_color(), label="supervised classifier")  # fmt: skip
            if method != "supervised":  # its random init is SLiM's encoder, drawn already
                ax.axhline(100 * report["anchors"]["random"][key], color=line.get_color(), linestyle=":",
                           linewidth=1, label=f"{method} random init")  # fmt: skip
        ax.axhline(100 * raw[key], color="grey", linestyle="--", label="raw joints")
        ax.set_title(title)
        ax.set_xlabel(f"training minutes ({' or '.join(map(str, threads))} torch thread(s), 2-core machine)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NW-UCLA cross-view test accuracy (%)")
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.suptitle(f"Accuracy against training budget, profile {args.profile}")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    out = save_figure(fig, RESULTS / f"budget-{args.profile}.png")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
