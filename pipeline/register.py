"""DVC stage `register` (`slim register`): log the pretrained SLiM encoder to MLflow and register it.

After every evaluation of the encoder: reads `encoder.pt` (weights_only) and the
`reports/<protocol>/<method>/metrics.json` of every protocol params.yaml's `evaluate.dag` runs for
it, then, inside the pipeline run's `register` child run (`tracking.stage_run`):

- logs the encoder with mlflow's pytorch flavour (`pt2`, signature `(B, 3, T, J) -> (B, D)`, an
  input example of real clips of the dataset, batch >= 2);
- registers it as `registry.model_name` (the version number the registration returns), with tags:
  layout, method, params, `inference.gflops_per_clip` and `inference.clips_per_s` measured now on
  real clips, `metric.<protocol>.<name>` per protocol, `anchor.<anchor>.<protocol>.<name>` of the
  frozen-feature anchors the same DAG evaluated (`reports/<protocol>/<anchor>/metrics.json`, the
  promotion gate's floor), the lineage tags (git commit, data hash, params hash, ...), and the
  encoder file's sha256;
- gives it the alias `challenger` (`slim promote` decides whether it becomes `champion`).

Writes `registry/<model>.json` (name, version, model URI, run id) atomically, then closes the
pipeline's parent run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import registry, tracking
from pipeline.embed import torch_threads
from pipeline.params import DEFAULT_PARAMS, ParamsError, load_params
from slim.atomic import atomic_write_text
from slim.checkpoint import load_checkpoint
from slim.data.schema import iter_sequences, read_table
from slim.data.transforms import eval_clip, prepare_clip
from slim.evaluation.features import person_presence
from slim.export import load_encoder
from slim.flops import count_flops, count_params, measure_throughput
from slim.layouts import get_layout

METHOD = "slim"


def registered_protocols(params_path: Path, method: str = METHOD) -> list[str]:
    """The protocols `dvc repro` evaluates `method` under (params.yaml `evaluate.dag`)."""
    params = load_params(params_path)
    if params.evaluate is None:
        raise ParamsError(f"{params_path}: no `evaluate` section: nothing says which protocols to register")
    dag = params.evaluate.dag
    protocols = list(dag.frozen) if method in dag.methods else []
    if method in dag.finetuned_methods:
        protocols += list(dag.finetuned)
    if not protocols:
        raise ParamsError(f"{params_path}: evaluate.dag evaluates no protocol for method {method!r}")
    return protocols


def read_report(path: Path, protocol: str, layout: str, missing: str) -> dict:
    """The metrics.json at `path`, checked to hold `protocol` on `layout` with a numeric `top1`;
    `missing` is the error's advice when the file does not exist."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: {missing}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a JSON metrics file ({exc})") from exc
    if doc.get("protocol", protocol) != protocol:
        raise ValueError(f"{path}: holds protocol {doc.get('protocol')!r}, expected {protocol!r}")
    if doc.get("layout", layout) != layout:
        raise ValueError(f"{path}: evaluated on layout {doc.get('layout')!r}, the encoder has {layout!r}")
    if not registry.finite(doc.get("top1")):
        raise ValueError(f"{path}: no numeric `top1`")
    return doc


def report_metrics(doc: dict, protocol: str) -> dict[str, float]:
    """`<protocol>.top1`, `<protocol>.top5` and, for knn, `knn.k<K>.top1|top5` of a metrics.json."""
    metrics: dict[str, float] = {}
    for name in ("top1", "top5"):
        if registry.finite(doc.get(name)):
            metrics[f"{protocol}.{name}"] = float(doc[name])
    for k, scores in (doc.get("knn") or {}).items():
        for name in ("top1", "top5"):
            if isinstance(scores, dict) and registry.finite(scores.get(name)):
                metrics[f"{protocol}.{k}.{name}"] = float(scores[name])
    return metrics


def collect_metrics(reports_root: Path, protocols: list[str], method: str, layout: str) -> dict[str, float]:
    """`<protocol>.top1`, `<protocol>.top5` and, for knn, `knn.k<K>.top1|top5` from each
    `reports_root/<protocol>/<method>/metrics.json`."""
    metrics: dict[str, float] = {}
    for protocol in protocols:
        path = Path(reports_root) / protocol / method / "metrics.json"
        doc = read_report(path, protocol, layout, f"evaluate the encoder under {protocol!r} first (`dvc repro`)")
        metrics |= report_metrics(doc, protocol)
    return metrics


# What makes an anchor's figure comparable with the encoder's: the same split (samples), the same
# evaluation profile and seed (protocol settings). Compared where both reports record them.
SAME_EVALUATION = ("split", "profile", "seed")


def dag_anchors(params_path: Path) -> tuple[list[str], list[str]]:
    """(anchors, frozen protocols) params.yaml's `evaluate.dag` evaluates: the anchor@ stages' matrix."""
    params = load_params(params_path)
    if params.evaluate is None:
        raise ParamsError(f"{params_path}: no `evaluate` section: nothing says which anchors to record")
    return list(params.evaluate.dag.anchors), list(params.evaluate.dag.frozen)


def collect_anchor_metrics(
    reports_root: Path,
    protocols: list[str],
    method: str,
    layout: str,
    *,
    evaluated: list[str],
    enforced: list[str],
) -> dict[str, dict[str, float]]:
    """{anchor: metrics like `collect_metrics`'} of every anchor in `evaluated` (evaluate.dag.anchors)
    from `reports_root/<protocol>/<anchor>/metrics.json`, for the frozen `protocols` the encoder was
    evaluated under: the promotion gate's floor, measured in the same DAG as the encoder.

    An anchor of `enforced` (registry.floor_anchors) must be in `evaluated` and have every report: a
    floor nobody measured would refuse every version, or, worse, compare against a stale figure. An
    anchor that is only recorded may lack a report (the decision says "not measured"). A report on
    another split, profile or seed than the encoder's report of the same protocol is an error."""
    for anchor in enforced:
        if anchor not in evaluated:
            raise ParamsError(
                f"registry.floor_anchors has {anchor!r}, which evaluate.dag.anchors ({', '.join(evaluated) or 'none'}) "
                f"does not evaluate: add {anchor!r} to evaluate.dag.anchors (or drop it from the floor)"
            )
    own_paths = {protocol: Path(reports_root) / protocol / method / "metrics.json" for protocol in protocols}
    own_reports = {
        protocol: read_report(path, protocol, layout, f"evaluate the encoder under {protocol!r} first")
        for protocol, path in own_paths.items()
    }
    out: dict[str, dict[str, float]] = {}
    for anchor in evaluated:
        for protocol in protocols:
            path = Path(reports_root) / protocol / anchor / "metrics.json"
            if anchor not in enforced and not path.is_file():
                continue
            advice = (
                f"registry.floor_anchors needs anchor {anchor!r} under {protocol!r}: keep {anchor!r} in "
                f"evaluate.dag.anchors and run `dvc repro` (stage anchor@{protocol}-{anchor})"
            )
            doc = read_report(path, protocol, layout, advice)
            own_path, own = own_paths[protocol], own_reports[protocol]
            for key in SAME_EVALUATION:
                if key in doc and key in own and doc[key] != own[key]:
                    raise ValueError(
                        f"{path}: {key} {doc[key]!r}, but the encoder's {own_path} has {own[key]!r}: the anchor "
                        f"was not evaluated with the encoder; rerun the DAG (`dvc repro`)"
                    )
            out.setdefault(anchor, {}).update(report_metrics(doc, protocol))
    return out


def score_tags(metrics: dict[str, float], anchors: dict[str, dict[str, float]]) -> dict[str, float]:
    """The version tags of the encoder's metrics (`metric.<protocol>.<name>`) and of the anchors
    measured in the same DAG (`anchor.<anchor>.<protocol>.<name>`), which the promotion gate reads."""
    return {
        **{f"{registry.METRIC_PREFIX}{k}": v for k, v in metrics.items()},
        **{f"{registry.ANCHOR_PREFIX}{a}.{k}": v for a, scores in anchors.items() for k, v in scores.items()},
    }


def real_clips(data_path: Path, layout: str, frames: int, count: int, normalise_view: bool) -> torch.Tensor:
    """`count` one-person test-time clips `(count, 3, frames, J)` from the first sequences of the
    dataset (stored order): eval_clip of prepare_clip (view-normalised as the encoder expects),
    every present person a clip."""
    lay = get_layout(layout)
    clips: list[np.ndarray] = []
    for seq in iter_sequences(Path(data_path), batch_size=max(count, 8)):
        if seq.layout != layout:
            raise ValueError(f"{data_path}: sample {seq.sample_id} has layout {seq.layout!r}, the encoder {layout!r}")
        try:
            persons = eval_clip(prepare_clip(seq.joints, lay, normalise=normalise_view), frames)
        except ValueError:
            continue  # no valid frame: evaluation would reject it too; not an example
        present = person_presence(torch.from_numpy(persons)[None])[0]
        clips.extend(persons[i] for i in range(len(persons)) if present[i])
        if len(clips) >= count:
            return torch.from_numpy(np.stack(clips[:count]))
    raise ValueError(f"{data_path}: fewer than {count} valid clips")


def measure(encoder: torch.nn.Module, clips: torch.Tensor) -> dict:
    """Inference GFLOPs per one-person clip (FlopCounterMode) and clips/s on this machine."""
    gflops = count_flops(encoder, clips) / clips.shape[0] / 1e9
    return {
        "gflops_per_clip": gflops,
        "clips_per_s": measure_throughput(encoder, clips),
        "batch": int(clips.shape[0]),
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }


def dataset_name(data_path: Path) -> str:
    values = read_table(Path(data_path), columns=["dataset"]).column("dataset").unique().to_pylist()
    if len(values) != 1:
        raise ValueError(f"{data_path}: expected one dataset, found {values}")
    return values[0]


def run(
    encoder_path: Path,
    data_path: Path,
    reports_root: Path,
    out_path: Path,
    *,
    params_path: Path = DEFAULT_PARAMS,
    dataset: str | None = None,
) -> dict:
    """Log, register and tag the encoder (see the module docstring); return what was written."""
    start = time.perf_counter()
    if not tracking.enabled():
        raise registry.RegistryError(f"MLflow tracking is disabled ({tracking.SWITCH_ENV}): registering needs it")
    encoder_path, data_path = Path(encoder_path), Path(data_path)
    for path, what in ((encoder_path, "encoder"), (data_path, "dataset")):
        if not path.is_file():
            raise ValueError(f"{what} {path} does not exist")
    settings = registry.settings(params_path)
    state = load_checkpoint(encoder_path)
    method, layout = state.get("method"), state.get("layout")
    protocols = registered_protocols(params_path, method)
    metrics = collect_metrics(Path(reports_root), protocols, method, layout)
    anchors_evaluated, frozen = dag_anchors(params_path)
    anchors = collect_anchor_metrics(
        Path(reports_root), [p for p in protocols if p in frozen], method, layout,
        evaluated=anchors_evaluated, enforced=list(settings.floor_anchors),
    )  # fmt: skip
    encoder = load_encoder(encoder_path)
    dataset = dataset or dataset_name(data_path)
    clips = real_clips(
        data_path,
        layout,
        encoder.num_frames,
        max(settings.example_clips, settings.throughput_batch),
        encoder.normalise_view,
    )
    tags = {
        "layout": layout,
        "method": method,
        "num_frames": encoder.num_frames,
        "normalise_view": encoder.normalise_view,
        "feature_dim": encoder.feature_dim,
        "params": count_params(encoder),
        "eval.protocols": ",".join(protocols),
        **score_tags(metrics, anchors),
        **tracking.lineage_tags(dataset, data_path, params_path=params_path),
        "source.encoder": str(encoder_path),
        "source.encoder_sha256": registry.sha256_file(encoder_path),
        "source.encoder_md5": tracking.data_hash(encoder_path),  # DVC's hash: finds the file in the DVC cache
    }
    stage_params = {"model_name": settings.model_name, "encoder": str(encoder_path), "protocols": ",".join(protocols)}
    with (
        torch_threads(settings.threads),
        tracking.stage_run(
            "register", dataset=dataset, params=stage_params, data_path=data_path, params_path=params_path
        ) as active,
    ):
        if active is None:
            raise registry.RegistryError("MLflow tracking is disabled (SLIM_TRACKING): registering needs it")
        inference = measure(encoder, clips[: settings.throughput_batch])
        info = registry.log_encoder(
            encoder, clips[: settings.example_clips], layout=layout, name=settings.model_name, metadata={"method": method}
        )
        tags |= {f"inference.{k}": v for k, v in inference.items()}
        version = registry.register_version(info.model_uri, settings.model_name, tags)
        registry.log_metrics({f"inference.{k}": inference[k] for k in ("gflops_per_clip", "clips_per_s")})
        run_id = active.info.run_id
    doc = {
        "name": settings.model_name,
        "version": version,
        "alias": registry.CHALLENGER,
        "model_uri": f"models:/{settings.model_name}/{version}",
        "logged_model_uri": info.model_uri,
        "run_id": run_id,
        "metrics": metrics,
        "inference": inference,
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(Path(out_path), json.dumps(doc, indent=2) + "\n")
    tracking.close_pipeline_run(dataset)
    return doc
