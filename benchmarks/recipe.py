"""Choose pretraining settings on a validation split, never on the test split.

    slim split ucla-xview-val data/parquet/nw-ucla/sequences.parquet data/splits/ucla-xview-val.json
    python benchmarks/recipe.py NAME '{"steps": 300, "lr": 5e-3, "teacher_temp": [0.04, 0.04], ...}'

Pretrains SLiM (or `"method": "mae"`) with `slim.train.TrainConfig` built from the JSON (keys of
TrainConfig; unset ones take the defaults below, one thread each so two searches share the 2 cores)
on the unlabelled clips of the pretraining split (default ucla-xview's training views 1 and 2), then
scores the student, the EMA teacher and a random-init encoder of the same config on the validation
split ucla-xview-val (gallery view 1, queries view 2; view 3, the test view, is never read): kNN-1,
kNN-20 and the linear probe. Appends one JSON line to benchmarks/results/recipe-search.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.evaluate import frozen_features, load_eval_data  # noqa: E402
from pipeline.split import read_split  # noqa: E402
from slim.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from slim.data.dataset import load_training_clips  # noqa: E402
from slim.evaluation import LinearProbeConfig, knn_evaluate, linear_probe  # noqa: E402
from slim.train import TrainConfig, build_model, model_config, pretrain, student_encoder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "recipe-search.jsonl"
DEFAULTS = {"method": "slim", "steps": 200, "batch_size": 32, "lr": 2e-3, "threads": 1, "num_workers": 1,
            "checkpoint_every": 100_000, "keep_checkpoints": 1}  # fmt: skip


def score(encoder: torch.nn.Module, data) -> dict[str, float]:
    """kNN-1, kNN-20 and linear-probe top-1 of the encoder's frozen features on the validation split."""
    features = frozen_features(encoder, data, batch_size=64, progress=False)
    args = (features[0], data.train.labels, features[1], data.test.labels, len(data.class_names))
    knn = knn_evaluate(*args, ks=(1, 20))
    linear = linear_probe(*args, LinearProbeConfig(epochs=100, lr=1e-2, batch_size=256))
    return {"knn1": knn[1]["top1"], "knn20": knn[20]["top1"], "linear": linear.top1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="a name for the run (its folder under benchmarks/work/recipe/)")
    parser.add_argument("spec", help="TrainConfig fields as JSON")
    parser.add_argument("--pretrain-split", type=Path, default=ROOT / "data/splits/ucla-xview.json")
    parser.add_argument("--val-split", type=Path, default=ROOT / "data/splits/ucla-xview-val.json")
    parser.add_argument("--data", type=Path, default=ROOT / "data/parquet/nw-ucla/sequences.parquet")
    args = parser.parse_args()
    config = TrainConfig(**{**DEFAULTS, **json.loads(args.spec)})
    torch.set_num_threads(config.threads or torch.get_num_threads())
    val = load_eval_data(args.val_split, args.data)
    if val.split != "ucla-xview-val":
        sys.exit(f"error: {args.val_split} is split {val.split!r}; settings are chosen on ucla-xview-val")

    def fresh_model():
        torch.manual_seed(config.seed)
        return build_model(model_config(config.method, config.model, val.layout.num_joints, config.normalise_view))

    result = {"name": args.name, "spec": json.loads(args.spec), "random": score(student_encoder(fresh_model()), val)}
    clips = load_training_clips(args.data, read_split(args.pretrain_split)["train"], config.normalise_view)
    out = ROOT / "benchmarks" / "work" / "recipe" / args.name
    start = time.perf_counter()
    metrics = pretrain(config, clips, out, progress=False, device="cpu")
    result["train_s"] = round(time.perf_counter() - start, 1)
    result["final"] = metrics["final"]
    model = fresh_model()
    model.load_state_dict(load_checkpoint(latest_checkpoint(out / "checkpoints"))["model"])
    result["student"] = score(student_encoder(model), val)
    if config.method == "slim":
        result["teacher"] = score(model.teacher["encoder"], val)
    print(json.dumps(result), flush=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
