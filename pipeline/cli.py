"""The `slim` command line: one subcommand per pipeline step (each is also what a DVC stage runs)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="SLiM skeleton-encoder pipeline: ingest raw skeletons, split, pretrain, evaluate, measure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class RawFormat(StrEnum):
    ntu = "ntu"
    nw_ucla = "nw-ucla"
    npz = "npz"


class Method(StrEnum):
    slim = "slim"
    mae = "mae"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _require_files(**paths: Path | None) -> None:
    """Fail with a clear message for the first given path that is not an existing file."""
    for what, path in paths.items():
        if path is not None and not path.is_file():
            _fail(f"--{what} {path} does not exist")


def _print_json(doc: dict) -> None:
    typer.echo(json.dumps(doc, indent=2))


@app.command()
def ingest(
    src: Annotated[Path, typer.Argument(help="Folder of raw files (searched recursively).")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder: sequences.parquet, quarantine.jsonl, summary.json.")],
    format: Annotated[RawFormat, typer.Option("--format", "-f", help="Raw format of the files in SRC.")],
    max_bad_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fail if more than this share of files is malformed.")
    ] = 0.05,
    workers: Annotated[int, typer.Option(min=0, help="Parsing processes (0 = one per core).")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Ingest raw skeleton files into one Parquet dataset; malformed files go to quarantine.jsonl."""
    from pipeline.ingest import run

    if not src.is_dir():
        _fail(f"source folder {src} does not exist")
    try:
        summary = run(format.value, src, out_dir, max_bad_fraction, workers or None, progress=progress)
    except ValueError as exc:
        _fail(str(exc))
    _print_json(summary)


@app.command()
def split(
    protocol: Annotated[str, typer.Argument(help="Protocol name, e.g. ucla-xview, ntu60-xsub (see `slim protocols`).")],
    parquet: Annotated[Path, typer.Argument(help="sequences.parquet written by `slim ingest`.")],
    out: Annotated[Path, typer.Argument(help="JSON file to write with the train/test sample ids.")],
) -> None:
    """Split an ingested dataset into train/test sample ids under an evaluation protocol."""
    from pipeline.split import run

    if not parquet.is_file():
        _fail(f"{parquet} does not exist: run `slim ingest` first")
    try:
        _print_json(run(protocol, parquet, out))
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def pretrain(
    method: Annotated[Method, typer.Option("--method", "-m", help="slim (the paper's method) or mae (the MAMP-style baseline).")],
    split: Annotated[Path, typer.Option(help="Split JSON written by `slim split`; its `train` ids are pretrained on.")],
    data: Annotated[Path, typer.Option(help="sequences.parquet written by `slim ingest`.")],
    out: Annotated[Path, typer.Option(help="Output folder: encoder.pt, metrics.json, plots.csv, checkpoints/.")],
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in OUT/checkpoints (else start over).")] = False,
    profile: Annotated[
        str | None, typer.Option(help="Profile in params.yaml `pretrain.profiles` (default: `pretrain.profile`), e.g. demo, paper.")
    ] = None,
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
    progress: Annotated[bool, typer.Option(help="Show a progress bar (else one line per checkpoint).")] = True,
) -> None:
    """Pretrain an encoder (SLiM or MAE) on the training split; for DDP run it under
    `torchrun --nproc_per_node N -m pipeline.cli pretrain ...`. Without --resume, old checkpoints in
    OUT are deleted."""
    from pipeline.params import ParamsError
    from pipeline.pretrain import run

    _require_files(split=split, data=data, params=params)
    try:
        metrics = run(method.value, split, data, out, resume=resume, profile=profile, params_path=params, progress=progress)
    except (ParamsError, ValueError) as exc:
        _fail(str(exc))
    _print_json(metrics)


class EvalProtocol(StrEnum):
    linear = "linear"
    knn = "knn"
    semi1 = "semi1"
    semi10 = "semi10"
    finetune = "finetune"


@app.command()
def evaluate(
    protocol: Annotated[
        EvalProtocol,
        typer.Option(
            "--protocol",
            "-p",
            help="linear / knn: linear probe / kNN on frozen features; semi1 / semi10 / finetune: "
            "fine-tune on 1% / 10% / all of the training labels.",
        ),
    ],
    split: Annotated[Path, typer.Option(help="Split JSON written by `slim split` (any dataset with the encoder's layout).")],
    data: Annotated[Path, typer.Option(help="sequences.parquet written by `slim ingest`.")],
    out: Annotated[
        Path,
        typer.Option(help="Output folder: metrics.json, per_class.csv, predictions.csv, confusion.png, embedding.png."),
    ],
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            "-e",
            help="A pretrained encoder (models/<method>/encoder.pt), or an anchor: raw (joint coordinates; "
            "linear, knn), random[:slim|mae] (random init; linear, knn), supervised[:slim|mae] (trained "
            "from scratch; semi1, semi10, finetune). Anchors take the encoder config of the pretrain "
            "profile (default slim).",
        ),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option(
            "--features",
            help="Instead of --encoder, for linear / knn: the features file `slim features` wrote "
            "(the encoder is not run again).",
        ),
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="Profile in params.yaml `evaluate.profiles` (default: `evaluate.profile`), e.g. demo, full.")
    ] = None,
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
    progress: Annotated[bool, typer.Option(help="Show progress bars while extracting features.")] = True,
) -> None:
    """Evaluate an encoder (or an anchor) under one downstream protocol; prints the metrics."""
    from pipeline.evaluate import run
    from pipeline.params import ParamsError

    _require_files(split=split, data=data, params=params, features=features)
    try:
        metrics = run(
            protocol.value, encoder, split, data, out,
            features=features, profile=profile, params_path=params, progress=progress,
        )  # fmt: skip
    except (ParamsError, ValueError) as exc:
        _fail(str(exc))
    _print_json({k: v for k, v in metrics.items() if k != "per_class"})


@app.command("features")
def features_command(
    encoder: Annotated[
        str,
        typer.Option(
            "--encoder",
            "-e",
            help="A pretrained encoder (models/<method>/encoder.pt), raw (joint coordinates) or "
            "random[:slim|mae] (random init with the pretrain profile's config).",
        ),
    ],
    split: Annotated[Path, typer.Option(help="Split JSON written by `slim split`.")],
    data: Annotated[Path, typer.Option(help="sequences.parquet written by `slim ingest`.")],
    out: Annotated[Path, typer.Option(help="Features file to write (.npz), read by `slim evaluate --features`.")],
    profile: Annotated[
        str | None, typer.Option(help="Profile in params.yaml `evaluate.profiles` (batch size, threads).")
    ] = None,
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
    progress: Annotated[bool, typer.Option(help="Show a progress bar while encoding.")] = True,
) -> None:
    """Encode both sides of a split once with a frozen encoder; the linear and kNN protocols read the
    file (`slim evaluate --protocol linear --features OUT`)."""
    from pipeline.features import run
    from pipeline.params import ParamsError

    _require_files(split=split, data=data, params=params)
    try:
        summary = run(encoder, split, data, out, profile=profile, params_path=params, progress=progress)
    except (ParamsError, ValueError) as exc:
        _fail(str(exc))
    _print_json(summary)


@app.command()
def protocols() -> None:
    """List the evaluation protocols and the dataset each one splits."""
    from slim.data.splits import PROTOCOLS

    for p in PROTOCOLS.values():
        typer.echo(f"{p.name:14s} {p.dataset:8s} {p.description}")


@app.command()
def layouts() -> None:
    """Show the skeleton layouts: joints, parents, mirror pairs, body-part groups."""
    from slim.layouts import LAYOUTS

    for layout in LAYOUTS.values():
        typer.echo(f"{layout.name}: {layout.num_joints} joints, root {layout.root}, centre {layout.centre}")
        for j, name in enumerate(layout.joint_names):
            parent = layout.parents[j]
            mirror = layout.mirror_permutation[j]
            typer.echo(
                f"  {j:2d} {name:16s} parent {parent:3d}  mirror {mirror:2d}  {layout.group_of_joint[j]}"
            )


@app.command()
def flops(
    layout: Annotated[str, typer.Option(help="Skeleton layout: ntu25 (25 joints) or ucla20.")] = "ntu25",
    timing: Annotated[bool, typer.Option(help="Also time inference (clips/s, fraction of matmul rate).")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Clips per timed inference call.")] = 16,
    repeats: Annotated[int, typer.Option(min=1, help="Timed calls per encoder (median).")] = 10,
    persons_present: Annotated[
        float, typer.Option(min=1.0, max=2.0, help="Mean persons per sample for the published protocol.")
    ] = 1.0,
) -> None:
    """Inference GFLOPs per clip and parameters of the SLiM and MAE encoders (paper configs), measured
    with torch's FlopCounterMode (attention included); --timing adds clips/s on this machine.
    `benchmarks/efficiency.py` writes the full report as JSON."""
    import torch

    from slim.flops import count_flops, count_params, inference_report
    from slim.models import build

    try:
        encoders = {name: build(name, layout).eval() for name in ("slim", "mae")}
    except ValueError as exc:
        _fail(str(exc))
    if timing:
        _print_json(inference_report(encoders, batch, persons_present, repeats=repeats))
        return
    for name, model in encoders.items():
        x = torch.zeros(1, 3, model.num_frames, model.num_joints)
        gflops = count_flops(model, x) / 1e9
        typer.echo(f"{name:5s} {model.num_frames:4d} frames  {gflops:6.2f} GFLOPs/clip  {count_params(model):,} params")


@app.command("check-params")
def check_params(
    path: Annotated[Path, typer.Argument(help="Parameters file.")] = Path("params.yaml"),
) -> None:
    """Validate params.yaml (unknown keys, bad values, protocol/dataset mismatches)."""
    from pipeline.params import ParamsError, load_params

    try:
        load_params(path)
    except ParamsError as exc:
        _fail(str(exc))
    typer.echo(f"{path}: ok")


# ----------------------------------------------------------------------------- MLflow model registry


def _registry_errors() -> tuple[type[Exception], ...]:
    from pipeline.params import ParamsError
    from pipeline.tracking import mlflow_errors

    return (ParamsError, ValueError, FileNotFoundError, *mlflow_errors())


@app.command()
def register(
    encoder: Annotated[Path, typer.Option(help="Encoder file written by `slim pretrain`.")] = Path("models/slim/encoder.pt"),
    data: Annotated[Path, typer.Option(help="sequences.parquet the input example and timing clips come from.")] = Path(
        "data/parquet/nw-ucla/sequences.parquet"
    ),
    reports: Annotated[Path, typer.Option(help="Reports root holding <protocol>/<method>/metrics.json.")] = Path("reports"),
    out: Annotated[
        Path | None, typer.Option(help="JSON to write (default registry/<model>.json).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Experiment's dataset (default: the Parquet's `dataset`).")] = None,
    params: Annotated[Path, typer.Option(help="Parameters file (`registry`, `evaluate.dag`).")] = Path("params.yaml"),
) -> None:
    """Log the encoder to MLflow (pt2, signature, real-clip input example), register it as
    `registry.model_name` with measured GFLOPs, clips/s and eval metrics as tags, alias `challenger`."""
    _require_files(params=params)
    from pipeline.register import run
    from pipeline.registry import settings

    errors = _registry_errors()
    try:
        out = out or Path("registry") / f"{settings(params).model_name}.json"
        doc = run(encoder, data, reports, out, params_path=params, dataset=dataset)
    except errors as exc:
        _fail(str(exc))
    _print_json(doc)


@app.command()
def promote(
    model: Annotated[str | None, typer.Option(help="Registered model (default: params registry.model_name).")] = None,
    version: Annotated[str, typer.Option(help="Candidate: a version number or an alias.")] = "challenger",
    rollback: Annotated[bool, typer.Option("--rollback", help="Give `champion` back to the previous champion.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Promote even if the gate (anchor floor included) refuses; recorded as `forced`.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON instead of text.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 3 when the gate refuses the candidate.")] = False,
    params: Annotated[Path, typer.Option(help="Parameters file (`registry`: gate rules).")] = Path("params.yaml"),
) -> None:
    """Move alias `champion` to the candidate if it beats the anchors measured in its DAG run
    (`registry.floor_anchors` by `floor_margin`; the first version too, so below the floor there is
    no champion) and beats the champion on the primary metric by the margin, regressing no other
    protocol beyond the tolerance. The decision, stating the candidate against every anchor, becomes
    version tags. Exit 0 whether promoted or kept (3 with --strict when refused), 1 on errors.
    --rollback restores the previous champion; --force promotes a refused one (recorded as `forced`)."""
    _require_files(params=params)
    from pipeline import registry

    errors = _registry_errors()
    try:
        settings = registry.settings(params)
        name = model or settings.model_name
        if rollback:
            decision = registry.rollback(name)
        else:
            rules = registry.GateRules.from_settings(settings)
            decision = registry.promote(name, version, rules, force=force)
    except errors as exc:
        _fail(str(exc))
    if as_json:
        _print_json(decision.to_dict())
    else:
        typer.echo(decision.summary())
    if strict and decision.decision == "refused":
        raise typer.Exit(code=3)


@app.command()
def embed(
    input: Annotated[Path, typer.Option("--input", "-i", help="sequences.parquet written by `slim ingest`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Parquet to write: sample_id, label, embedding.")],
    model: Annotated[
        str, typer.Option(help="models:/<name>@<alias>, models:/<name>/<version>, or a local encoder.pt.")
    ] = "models:/slim-encoder@champion",
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per forward pass.")] = 64,
    threads: Annotated[int, typer.Option(min=0, help="Torch threads (0 = torch's default, one per core).")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Embed every sample of a Parquet dataset with a registered (or local) encoder: the evaluation's
    frozen clip feature, written with the sample ids to Parquet."""
    from pipeline.embed import run

    errors = _registry_errors()
    try:
        summary = run(model, input, output, batch_size=batch_size, threads=threads, progress=progress)
    except errors as exc:
        _fail(str(exc))
    _print_json(summary)


# ----------------------------------------------------------------------------- MLflow runs

runs_app = typer.Typer(
    help="Tracked MLflow runs ($MLFLOW_TRACKING_URI, default sqlite:///mlflow.db at the repo root).",
    no_args_is_help=True,
)
app.add_typer(runs_app, name="runs")


@runs_app.command("compare")
def runs_compare(
    dataset: Annotated[str, typer.Option(help="Dataset: its experiment is slim-<dataset>.")] = "nw-ucla",
    run: Annotated[
        str | None, typer.Option("--run", help="Pipeline (parent) run id (default: the newest with evaluations).")
    ] = None,
) -> None:
    """One row per encoder, one column per evaluation metric (<protocol>/top1, knn/top1_k20, ...) of a
    pipeline run: the table the MLflow UI shows when its evaluate runs are grouped by `slim.encoder`."""
    from pipeline import tracking

    if not tracking.enabled():
        _fail("MLflow tracking is off (SLIM_TRACKING); unset it to compare runs")
    try:
        typer.echo(tracking.compare(dataset, run).format())
    except (ValueError, *tracking.mlflow_errors()) as exc:
        _fail(str(exc))


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Why Prefect runs would sit in "Late": checks the server at PREFECT_API_URL, the work pools `gpu`
    and `cpu`, their online workers, the deployments and their late runs. Exit 1 on any problem."""
    import flows  # noqa: F401  (project-local PREFECT_HOME before prefect is imported)
    from flows.doctor import diagnose

    report = diagnose()
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if report.problems:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
