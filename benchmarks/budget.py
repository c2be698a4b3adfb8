"""Downstream accuracy against pretraining budget on this machine: how much CPU time does a method
need before its features beat the raw-joints anchor?

    python benchmarks/budget.py --method slim --profile cpu-long [--resume] [--skip-train] [--score-every N]
    python benchmarks/budget.py --method supervised --profile cpu-long --epochs 2,5,10,20
    python benchmarks/plot_budget.py        # the curves of every budget-*.json as one PNG

Pretrains `method` with the params.yaml profile on the NW-UCLA cross-view training split (run
`dvc repro split@ucla-xview` first), keeping a checkpoint every `checkpoint_every` steps, then scores
every checkpoint's encoders (student, and for SLiM the EMA teacher) with kNN and the linear probe of
the demo evaluation profile, next to the raw-joints and random-init anchors. `supervised` instead
trains the profile's SLiM encoder from scratch on all training labels (the evaluation profile's
fine-tuning settings), one full schedule per `--epochs` value, and scores its classifier and its
frozen features the same way: the reference an SSL curve is read against. Writes
benchmarks/results/budget-<method>-<profile>.json with the curve (step, training minutes, accuracy)
and the first checkpoint whose kNN top-1 beats raw joints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.evaluate import (  # noqa: E402
    EncoderSpec,
    clip_tensor,
    frozen_features,
    load_eval_data,
    run_knn,
    run_linear,
    split_features,
)
from pipeline.params import load_profile  # noqa: E402
from pipeline.pretrain import train_config  # noqa: E402
from pipeline.split import read_split  # noqa: E402
from slim.atomic import atomic_write_text  # noqa: E402
from slim.checkpoint import CHECKPOINT_PATTERN, load_checkpoint  # noqa: E402
from slim.data.dataset import load_training_clips  # noqa: E402
from slim.encoder import SLiMEncoder  # noqa: E402
from slim.evaluation import FinetuneConfig, finetune  # noqa: E402
from slim.train import build_model, model_config, pretrain  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def scores(features, data, profile) -> dict:
    knn = run_knn(features[0], features[1], data, profile).details["knn"]
    linear = run_linear(features[0], features[1], data, profile, torch.device("cpu"))
    return {**{f"knn_top1@{k[1:]}": v["top1"] for k, v in knn.items()}, "linear_top1": linear.top1}


def encoders_of(checkpoint: dict, config, num_joints: int) -> dict:
    """The checkpoint's student encoder and, for SLiM, its EMA teacher's."""
    model = build_model(model_config(config.method, config.model, num_joints, config.normalise_view))
    model.load_state_dict(checkpoint["model"])
    if config.method == "slim":
        return {"student": model.student["encoder"], "teacher": model.teacher["encoder"]}
    return {"student": model.encoder}


def supervised_curve(config, data, eval_profile, epochs: list[int]) -> list[dict]:
    """One full fine-tuning schedule from random init per entry of `epochs`: minutes and accuracies."""
    device = torch.device("cpu")
    cfg = model_config("slim", config.model, data.layout.num_joints, config.normalise_view).encoder
    frames, normalise = cfg.num_frames, cfg.normalise_view
    train_clips = clip_tensor(data.train, data.layout, frames, normalise)
    test_clips = clip_tensor(data.test, data.layout, frames, normalise)
    curve = []
    for n in epochs:
        torch.manual_seed(eval_profile.seed)
        encoder = SLiMEncoder(cfg)
        fine = FinetuneConfig(**{**eval_profile.finetune, "seed": eval_profile.seed, "epochs": n})
        start = time.perf_counter()
        model, result = finetune(
            encoder, train_clips, data.train.labels, test_clips, data.test.labels,
            len(data.class_names), fine, device,
        )  # fmt: skip
        minutes = (time.perf_counter() - start) / 60
        point = {"epochs": n, "pretrain_minutes": round(minutes, 2), "classifier_top1": result.top1}
        point["student"] = scores(
            frozen_features(model.encoder, data, eval_profile.batch_size, False), data, eval_profile
        )
        curve.append(point)
        print(json.dumps(point), flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", choices=["slim", "mae", "supervised"], default="slim")
    parser.add_argument(
        "--epochs", default="2,5,10,20", help="supervised: comma-separated schedule lengths (epochs)"
    )
    parser.add_argument("--profile", default="cpu-long", help="pretrain profile in params.yaml")
    parser.add_argument("--eval-profile", default="demo", help="evaluate profile in params.yaml")
    parser.add_argument("--split", type=Path, default=ROOT / "data/splits/ucla-xview.json")
    parser.add_argument("--data", type=Path, default=ROOT / "data/parquet/nw-ucla/sequences.parquet")
    parser.add_argument(
        "--work", type=Path, default=None, help="checkpoint folder (default: benchmarks/work/...)"
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: the profile's); 1 runs two methods side by side at equal compute",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue an interrupted pretraining")
    parser.add_argument("--skip-train", action="store_true", help="only score the checkpoints already there")
    parser.add_argument(
        "--score-every", type=int, default=0, metavar="N",
        help="score only checkpoints at multiples of N steps, and the last (default: all); "
        "a MAE checkpoint costs about a minute to encode the split",
    )  # fmt: skip
    args = parser.parse_args()
    for path in (args.split, args.data):
        if not path.is_file():
            sys.exit(f"error: {path} does not exist: run `dvc repro split@ucla-xview` first")

    params = ROOT / "params.yaml"
    method = "slim" if args.method == "supervised" else args.method
    config = train_config(load_profile(params, "pretrain", args.profile)[1], method)
    if args.threads is not None:
        config = replace(config, threads=args.threads)
    _, eval_profile = load_profile(params, "evaluate", args.eval_profile)
    work = args.work or ROOT / "benchmarks" / "work" / f"{args.method}-{args.profile}"
    if not args.skip_train and args.method != "supervised":
        clips = load_training_clips(args.data, read_split(args.split)["train"], config.normalise_view)
        pretrain(config, clips, work, resume=args.resume, progress=True)

    data = load_eval_data(args.split, args.data)
    torch.set_num_threads(config.threads or os.cpu_count())
    anchors = {
        name: scores((split_feats.train, split_feats.test), data, eval_profile)
        for name, split_feats in (
            (name, split_features(spec, data, eval_profile, params, progress=False))
            for name, spec in (("raw", EncoderSpec("raw")), ("random", EncoderSpec("random", method)))
        )
    }
    print(f"anchors: {json.dumps(anchors)}", flush=True)
    curve = []
    paths = []
    if args.method == "supervised":
        curve = supervised_curve(config, data, eval_profile, [int(e) for e in args.epochs.split(",")])
    else:
        paths = sorted(p for p in (work / "checkpoints").iterdir() if CHECKPOINT_PATTERN.match(p.name))
    for path in paths:
        step = int(CHECKPOINT_PATTERN.match(path.name).group(1))
        if args.score_every and step % args.score_every and path != paths[-1]:
            continue
        checkpoint = load_checkpoint(path)
        point = {"step": checkpoint["step"], "pretrain_minutes": round(checkpoint["elapsed_s"] / 60, 2)}
        for role, encoder in encoders_of(checkpoint, config, data.layout.num_joints).items():
            point[role] = scores(
                frozen_features(encoder, data, eval_profile.batch_size, False), data, eval_profile
            )
        curve.append(point)
        print(json.dumps(point), flush=True)

    raw_knn = anchors["raw"]["knn_top1@1"]
    beating = [
        p for p in curve if max(v["knn_top1@1"] for k, v in p.items() if isinstance(v, dict)) > raw_knn
    ]
    report = {
        "method": args.method,
        "profile": args.profile,
        "eval_profile": args.eval_profile,
        "config": {k: v for k, v in vars(config).items() if k not in ("method",)},
        "anchors": anchors,
        "curve": curve,
        "first_checkpoint_beating_raw_knn": beating[0] if beating else None,
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }  # fmt: skip
    out = RESULTS / f"budget-{args.method}-{args.profile}.json"
    atomic_write_text(out, json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
