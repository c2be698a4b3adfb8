"""MLflow tracking: one experiment per dataset, a parent run per pipeline run, a child run per stage.

Where: `$MLFLOW_TRACKING_URI`, else the embedded SQLite store `mlflow.db` at the repo root, whose
experiments keep their artifacts under `mlartifacts/<experiment>/` (never `./mlruns`). A remote
`mlflow server` URI works unchanged. `SLIM_TRACKING=off` switches everything here into no-ops.

Grouping: `pipeline_run` (the Prefect flows) opens a parent run and hands its id to every stage, in
this process or a child one, through `$SLIM_PARENT_RUN_ID`. Without it, the stages that one `dvc
repro` (or one shell, for stages run by hand) starts one after another find their parent by its
owner tag, the host, pid and start time of that `dvc` process (or shell); the first stage creates it,
the `register` stage closes it, and a parent whose owner has exited without closing it is closed
when the next stage starts on the same host.

This module and pipeline/registry.py are the only ones that import mlflow, and they do it inside
functions: importing mlflow costs seconds, and the stage modules (and `slim --help`) import this one.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.params import DEFAULT_PARAMS, ParamsError, load_params
from pipeline.paths import REPO_ROOT

if TYPE_CHECKING:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Run

PARENT_ENV = "SLIM_PARENT_RUN_ID"
SWITCH_ENV = "SLIM_TRACKING"
RUN_KIND_TAG = "slim.run_kind"  # "pipeline" (a parent) or "stage"
OWNER_TAG = "slim.owner"  # host:pid:start-time of the process a parent run belongs to
STAGE_TAG = "slim.stage"
PROTOCOL_TAG = "slim.protocol"
ENCODER_TAG = "slim.encoder"
PARENT_TAG = "mlflow.parentRunId"
DVC_LOCK = REPO_ROOT / "dvc.lock"
ENCODER_ORDER = ("slim", "mae", "raw", "random", "supervised")
PROTOCOL_ORDER = ("linear", "knn", "semi1", "semi10", "finetune")
ACCURACY_METRIC = re.compile(r"top\d+(_k\d+)?")  # top1, top5, top1_k20: the columns of `runs compare`
_PARAM_VALUE_MAX = 6000  # mlflow's limit on a param value
_BATCH = 1000  # mlflow's limit on metrics per log_batch call
_ready: set[str] = set()  # tracking URIs whose store this process has created or checked
_experiments: dict[tuple[str, str], str] = {}
_lock_cache: dict[tuple[str, int, int], dict] = {}


# ----------------------------------------------------------------------------- where and whether


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def mlflow_errors() -> tuple[type[Exception], ...]:
    """The exceptions an MLflow call raises, for callers that must not import mlflow themselves."""
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise, across processes, what must not race on a SQLite store: creating its tables (two
    stages starting at once would both run the migrations) and find-or-create of experiments and
    parent runs. A remote server serialises those itself."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def client() -> MlflowClient:
    """An MlflowClient on `tracking_uri()`, also made the fluent API's URI; on first use in a process
    a SQLite store's tracking and registry tables are created, under the store lock."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri not in _ready:
        if _sqlite_path(uri) is not None:
            with _store_lock(uri):
                warm = MlflowClient(uri)
                warm.search_experiments(max_results=1)
                warm.search_registered_models(max_results=1)
        _ready.add(uri)
    return MlflowClient(uri)


def _artifact_location(name: str) -> str | None:
    """`mlartifacts/<name>` beside a SQLite store (the repo root for the default one); None (the
    server decides) otherwise."""
    path = _sqlite_path(tracking_uri())
    if path is None:
        return None
    return (path.resolve().parent / "mlartifacts" / name).as_uri()


def experiment(dataset: str) -> str:
    """The id of experiment `slim-<dataset>`, created on first use (restored if it was deleted)."""
    from mlflow.exceptions import MlflowException

    c, uri, name = client(), tracking_uri(), f"slim-{dataset}"
    if (uri, name) in _experiments:
        return _experiments[(uri, name)]
    with _store_lock(uri):
        found = c.get_experiment_by_name(name)
        if found is None:
            try:
                experiment_id = c.create_experiment(name, artifact_location=_artifact_location(name))
            except MlflowException as exc:  # another client created it first (a server has no lock)
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment_id = c.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = found.experiment_id
            if found.lifecycle_stage == "deleted":
                print(f"note: MLflow experiment {name} was deleted; restoring it", file=sys.stderr)
                c.restore_experiment(experiment_id)
    _experiments[(uri, name)] = experiment_id
    return experiment_id


# ----------------------------------------------------------------------------- lineage


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _device() -> str:
    """The CUDA device of a torch stage, else "cpu"; a stage that has not imported torch (ingest,
    split) runs on the CPU, and importing torch only to say so would cost it seconds."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return "cpu"
    return torch.cuda.get_device_name(torch.cuda.current_device())


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _lock_stages() -> dict[str, dict]:
    """dvc.lock's `stages` (empty without a readable dvc.lock), parsed once per version of the file:
    a stage asks several times, and the pure-Python YAML parser takes a second on a big lock."""
    try:
        stat = DVC_LOCK.stat()
    except OSError:
        return {}
    key = (str(DVC_LOCK), stat.st_mtime_ns, stat.st_size)
    if key not in _lock_cache:
        try:
            doc = yaml.load(DVC_LOCK.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except (OSError, yaml.YAMLError):
            doc = None
        _lock_cache.clear()
        _lock_cache[key] = (doc or {}).get("stages", {}) if isinstance(doc, dict) else {}
    return _lock_cache[key]


def _locked_outs() -> dict[Path, dict]:
    """dvc.lock `outs` entries (md5, size) by resolved path."""
    stages = _lock_stages()
    return {
        (REPO_ROOT / out["path"]).resolve(): out
        for stage in stages.values()
        for out in stage.get("outs", [])
        if "md5" in out
    }


def data_hash(data_path: Path) -> str:
    """DVC's md5 of a file: from dvc.lock when it lists the file and is not older than it (same size),
    else computed, e.g. during `dvc repro` before DVC has recorded a new output. A folder not in
    dvc.lock gets the md5 of its sorted `relpath md5` lines (not DVC's `.dir` hash)."""
    path = Path(data_path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"data hash: {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    locked = _locked_outs().get(path)
    if (
        locked is not None
        and locked.get("size") == sum(p.stat().st_size for p in files)
        and max((p.stat().st_mtime for p in files), default=0.0) <= DVC_LOCK.stat().st_mtime
    ):
        return str(locked["md5"])
    if not path.is_dir():
        return _md5(path)
    manifest = "".join(f"{p.relative_to(path).as_posix()} {_md5(p)}\n" for p in files)
    return hashlib.md5(manifest.encode()).hexdigest()


def params_hash(
    params_path: Path = DEFAULT_PARAMS, sections: Iterable[str] = ("pretrain", "evaluate")
) -> str:
    """16 hex digits of the sha256 of the validated `sections` (defaults filled, key order ignored)."""
    params = load_params(params_path)
    doc = {}
    for section in sections:
        value = getattr(params, section)
        doc[section] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def lineage_tags(
    dataset: str, data_path: Path | None = None, *, params_path: Path = DEFAULT_PARAMS
) -> dict[str, str]:
    """Tags every run carries. `git.dirty` counts changes to tracked files only (DVC outputs and
    other untracked files do not make a run dirty); `slim.params_hash` is "invalid" when the params
    file does not validate (the stages that read it fail on their own; the others need not)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        hashed = params_hash(params_path)
    except ParamsError:
        hashed = "invalid"
    tags = {
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "dataset": dataset,
        "host": socket.gethostname(),
        "device": _device(),
        "torch.version": importlib.metadata.version("torch"),
        "slim.params_hash": hashed,
    }
    if data_path is not None:
        tags["dvc.data_hash"] = data_hash(data_path)
    return tags


# ----------------------------------------------------------------------------- parent runs


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except (psutil.Error, OSError):
        return []


def _is_dvc(cmdline: list[str]) -> bool:
    return any(Path(arg).name == "dvc" for arg in cmdline[:3])


def _is_launcher(cmdline: list[str]) -> bool:
    return any(Path(arg).name == "torchrun" or arg == "torch.distributed.run" for arg in cmdline[:3])


def _owner_process():
    """The process a stage's parent run belongs to: the `dvc` process when DVC runs the stage, else
    the nearest ancestor that is not a torchrun launcher (the shell of a stage run by hand)."""
    import psutil

    ancestors = psutil.Process().parents()
    if os.environ.get("DVC_STAGE"):
        for process in ancestors:
            if _is_dvc(_cmdline(process)):
                return process
    for process in ancestors:
        if not _is_launcher(_cmdline(process)):
            return process
    return psutil.Process()


def _owner_tag(process) -> str:
    return f"{socket.gethostname()}:{process.pid}:{process.create_time():.2f}"


def _owner_alive(tag: str) -> bool:
    """False only for an owner on this host that has exited (a pid reused since counts as exited)."""
    import psutil

    host, _, rest = tag.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except psutil.Error:
        return False


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _pipeline_label(process) -> str:
    """`dvc repro`, `dvc exp run` (the dvc command words) or `slim` for stages run by hand."""
    cmdline = _cmdline(process)
    if not _is_dvc(cmdline):
        return "slim"
    start = next(i for i, arg in enumerate(cmdline) if Path(arg).name == "dvc") + 1
    words = []
    for arg in cmdline[start:]:
        if arg.startswith("-") or len(words) == 2:
            break
        words.append(arg)
    return " ".join(["dvc", *words])


def _create_parent(c: MlflowClient, experiment_id: str, name: str, owner: str, dataset: str) -> str:
    tags = lineage_tags(dataset) | {RUN_KIND_TAG: "pipeline", OWNER_TAG: owner}
    return c.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def _children(c: MlflowClient, experiment_id: str, parent: str, extra: str = "") -> list[Run]:
    query = f"tags.`{PARENT_TAG}` = '{parent}'" + (f" and {extra}" if extra else "")
    return c.search_runs(
        [experiment_id], filter_string=query, max_results=5000, order_by=["attributes.start_time ASC"]
    )


def _close_abandoned(c: MlflowClient, experiment_id: str) -> None:
    """End the RUNNING parents (and their RUNNING stages, as KILLED) whose owner has exited: a `dvc
    repro` that ended without its `register` stage, a killed flow. A parent ends FINISHED when all of
    its stages did, else FAILED."""
    query = f"tags.`{RUN_KIND_TAG}` = 'pipeline' and attributes.status = 'RUNNING'"
    for run in c.search_runs([experiment_id], filter_string=query, max_results=1000):
        if _owner_alive(run.data.tags.get(OWNER_TAG, "")):
            continue
        _end_parent(c, experiment_id, run.info.run_id)


def _end_parent(c: MlflowClient, experiment_id: str, parent: str) -> None:
    """End a parent FINISHED when all of its stages did, else FAILED (RUNNING stages become KILLED)."""
    ok = True
    for child in _children(c, experiment_id, parent):
        if child.info.status == "RUNNING":
            c.set_terminated(child.info.run_id, "KILLED")
        ok &= child.info.status == "FINISHED"
    c.set_terminated(parent, "FINISHED" if ok else "FAILED")


def _owned_parent(c: MlflowClient, experiment_id: str, owner: str) -> Run | None:
    """The newest parent of `owner` not yet FINISHED: one that a failed stage marked FAILED still
    takes the stages `dvc repro --keep-going` runs after it; one closed by `register` takes no more
    (a shell's next stages get a new parent)."""
    query = (
        f"tags.`{RUN_KIND_TAG}` = 'pipeline' and tags.`{OWNER_TAG}` = '{owner}'"
        " and attributes.status != 'FINISHED'"
    )
    runs = c.search_runs(
        [experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None


def parent_run_id(dataset: str) -> str | None:
    """The parent run of this process's stage: `$SLIM_PARENT_RUN_ID` if set; else the parent owned by
    this `dvc repro` (or shell), created here by its first stage (see the module docstring)."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    if not enabled():
        return None
    c, experiment_id = client(), experiment(dataset)
    process = _owner_process()
    owner = _owner_tag(process)
    with _store_lock(tracking_uri()):
        _close_abandoned(c, experiment_id)
        found = _owned_parent(c, experiment_id, owner)
        if found is not None:
            return found.info.run_id
        return _create_parent(c, experiment_id, f"{_pipeline_label(process)} {_utc_now()}", owner, dataset)


def close_pipeline_run(dataset: str, status: str = "FINISHED") -> str | None:
    """End this `dvc repro`'s parent run (the DAG's last stage, `register`, calls it) unless a stage
    already marked it FAILED; return its id (None if there is none open). The same owner's parents in
    other datasets' experiments (a repro that also ingests NTU has one in `slim-ntu`) end too, by
    their stages' outcome. A no-op under `pipeline_run`, which ends its own."""
    if not enabled() or os.environ.get(PARENT_ENV):
        return None
    c, own_experiment = client(), experiment(dataset)
    owner = _owner_tag(_owner_process())
    closed = None
    for other in c.search_experiments():
        found = _owned_parent(c, other.experiment_id, owner)
        if found is None:
            continue
        if other.experiment_id == own_experiment:
            closed = found.info.run_id
            if found.info.status == "RUNNING":
                c.set_terminated(closed, status)
        elif found.info.status == "RUNNING":
            _end_parent(c, other.experiment_id, found.info.run_id)
    return closed


def _status_of(exc: BaseException) -> str:
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


@contextmanager
def pipeline_run(dataset: str, name: str | None = None) -> Iterator[str | None]:
    """A parent run for a flow: stages started inside (in this process or a child process) nest
    under it; it ends FINISHED, or FAILED (KILLED on Ctrl-C) when the block raises."""
    if not enabled():
        yield None
        return
    import psutil

    c, experiment_id = client(), experiment(dataset)
    owner = _owner_tag(psutil.Process())
    run_id = _create_parent(c, experiment_id, name or f"flow {_utc_now()}", owner, dataset)
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    status = "FINISHED"
    try:
        yield run_id
    except BaseException as exc:
        status = _status_of(exc)
        raise
    finally:
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous
        c.set_terminated(run_id, status)


# ----------------------------------------------------------------------------- stage runs


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings -> dotted keys; lists and tuples stay one JSON value; values cut to mlflow's
    6,000 characters."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
            continue
        text = json.dumps(list(value)) if isinstance(value, list | tuple) else str(value)
        flat[name] = text if len(text) <= _PARAM_VALUE_MAX else text[: _PARAM_VALUE_MAX - 3] + "..."
    return flat


def dvc_lock_excerpt(stage: str) -> str | None:
    """YAML of `stage`'s dvc.lock entry and of the entries of the stages producing its deps; None if
    dvc.lock lacks the stage. During `dvc repro` the stage's own entry is its previous run's (DVC
    writes it after the command) while its upstream entries are current."""
    stages = _lock_stages()
    if stage not in stages:
        return None
    deps = {d["path"] for d in stages[stage].get("deps", [])}
    excerpt = {stage: stages[stage]}
    for name, entry in stages.items():
        if name != stage and deps & {o["path"] for o in entry.get("outs", [])}:
            excerpt[name] = entry
    return yaml.safe_dump({"stages": excerpt}, sort_keys=False)


@contextmanager
def stage_run(
    stage: str,
    *,
    dataset: str,
    params: Mapping[str, Any] | None = None,
    data_path: Path | None = None,
    params_path: Path = DEFAULT_PARAMS,
) -> Iterator[mlflow.ActiveRun | None]:
    """A child run named `stage` under `parent_run_id(dataset)`, with the lineage tags, `slim.stage`,
    the flattened `params` and the stage's dvc.lock excerpt (`dvc.lock.yaml`). It ends FAILED (KILLED
    on Ctrl-C) when the block raises, and so does a parent this stage did not get from
    `$SLIM_PARENT_RUN_ID` (DVC stops at a failed stage). Yields None when tracking is off and on
    every DDP rank but 0."""
    if not enabled() or int(os.environ.get("RANK", "0")) != 0:  # torchrun's rank (slim.distributed)
        yield None
        return
    import mlflow
    from mlflow.entities import Param

    c, experiment_id = client(), experiment(dataset)
    parent = parent_run_id(dataset)
    tags = lineage_tags(dataset, data_path, params_path=params_path) | {
        STAGE_TAG: stage,
        RUN_KIND_TAG: "stage",
    }
    run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent, tags=tags)
    try:
        if params:
            c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flatten(params).items()])
        excerpt = dvc_lock_excerpt(os.environ.get("DVC_STAGE") or stage)
        if excerpt is not None:
            mlflow.log_text(excerpt, "dvc.lock.yaml")
        yield run
    except BaseException as exc:
        mlflow.end_run(_status_of(exc))
        if not os.environ.get(PARENT_ENV):
            c.set_terminated(parent, _status_of(exc))
        raise
    mlflow.end_run("FINISHED")


def _metric_name(key: str) -> str:
    """A name mlflow accepts: `top1@20` -> `top1_k20`, other odd characters -> `_`."""
    return re.sub(r"[^/\w.\- :]", "_", re.sub(r"@(\d+)", r"_k\1", key))


def _numeric_leaves(doc: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in doc.items():
        if isinstance(value, Mapping):
            flat |= _numeric_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def log_metrics(values: Mapping[str, float], step: int = 0) -> None:
    """`values` into the active run at `step` (names made valid for mlflow, see `_metric_name`)."""
    if _active() is None:
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _log_batches([Metric(_metric_name(k), v, now, step) for k, v in values.items()])


def _log_batches(metrics: list) -> None:
    """`metrics` (mlflow Metric) into the active run, 1,000 per call (mlflow's limit)."""
    run = _active()
    if run is None:
        return
    c = client()
    for i in range(0, len(metrics), _BATCH):
        c.log_batch(run.info.run_id, metrics=metrics[i : i + _BATCH])


def _active() -> mlflow.ActiveRun | None:
    if not enabled():
        return None
    import mlflow

    return mlflow.active_run()


def log_metrics_file(path: Path, prefix: str = "", skip: Collection[str] = ()) -> None:
    """The numeric entries of a metrics JSON file (nested ones with dotted names, top-level keys in
    `skip` left out) into the active run, named `prefix + key`."""
    if _active() is None:
        return
    doc = json.loads(Path(path).read_text())
    values = _numeric_leaves({k: v for k, v in doc.items() if k not in skip})
    log_metrics({f"{prefix}{k}": v for k, v in values.items()})


def log_step_metrics(plots_csv: Path, prefix: str = "train/") -> None:
    """Every numeric column of a per-step CSV (slim.train's plots.csv) as a metric history `prefix +
    column` at the row's `step`, in batches of 1,000 values."""
    from mlflow.entities import Metric

    if _active() is None:
        return
    now = int(time.time() * 1000)
    metrics = []
    with Path(plots_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            for column, text in row.items():
                if column == "step":
                    continue
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue
                metrics.append(Metric(_metric_name(prefix + column), value, now, step))
    _log_batches(metrics)


def log_artifacts(paths: Iterable[Path], artifact_path: str | None = None) -> None:
    """Files (and folders) into the active run's artifacts; paths that do not exist are skipped."""
    if _active() is None:
        return
    import mlflow

    for path in map(Path, paths):
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path)
        elif path.is_dir():
            mlflow.log_artifacts(str(path), "/".join(filter(None, [artifact_path, path.name])))


def set_tags(tags: Mapping[str, str]) -> None:
    if _active() is not None:
        import mlflow

        mlflow.set_tags(dict(tags))


def log_text(text: str, artifact_file: str) -> None:
    if _active() is not None:
        import mlflow

        mlflow.log_text(text, artifact_file)


# ----------------------------------------------------------------------------- evaluation


def evaluation_metrics(doc: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of an evaluate metrics.json as mlflow names: numeric entries, nested ones dotted,
    `knn: {k20: {top1: ..}}` as `top1_k20`; `per_class` and `config` (per-class accuracies and
    hyperparameters, in per_class.csv and the run's params) left out."""
    flat: dict[str, float] = {}
    for key, value in doc.items():
        if key in ("per_class", "config"):
            continue
        if key == "knn" and isinstance(value, Mapping):
            for k, tops in value.items():
                for name, v in _numeric_leaves(tops).items():
                    flat[f"{name}_{k}"] = v
        else:
            flat |= _numeric_leaves({key: value})
    return {_metric_name(k): v for k, v in flat.items()}


def log_evaluation(protocol: str, encoder: str, out_dir: Path) -> None:
    """Log one evaluation into the active run (an `evaluate@<protocol>-<encoder>` stage run): tags
    `slim.protocol` and `slim.encoder`, the metrics of `out_dir`/metrics.json as `<protocol>/<name>`
    (e.g. linear/top1, knn/top1_k20) and its reports as artifacts."""
    if _active() is None:
        return
    import mlflow

    out_dir = Path(out_dir)
    mlflow.set_tags({PROTOCOL_TAG: protocol, ENCODER_TAG: encoder})
    doc = json.loads((out_dir / "metrics.json").read_text())
    log_metrics({f"{protocol}/{k}": v for k, v in evaluation_metrics(doc).items()})
    log_artifacts(
        out_dir / name for name in ("metrics.json", "per_class.csv", "confusion.png", "embedding.png")
    )


@dataclass(frozen=True)
class Comparison:
    """One pipeline run's evaluations: a row per encoder, a column per `<protocol>/<accuracy>`."""

    experiment: str
    parent_id: str
    parent_name: str
    parent_status: str
    columns: tuple[str, ...]
    rows: dict[str, dict[str, float]]

    def format(self) -> str:
        width = max([len("encoder"), *map(len, self.rows)])
        widths = [max(len(c), 6) for c in self.columns]
        lines = [
            f"{self.experiment}: pipeline run {self.parent_name!r} ({self.parent_id}, {self.parent_status})",
            "  ".join(
                ["encoder".ljust(width), *(c.rjust(w) for c, w in zip(self.columns, widths, strict=True))]
            ),
        ]
        for encoder, values in self.rows.items():
            cells = [f"{values[c]:.4f}" if c in values else "-" for c in self.columns]
            lines.append(
                "  ".join([encoder.ljust(width), *(v.rjust(w) for v, w in zip(cells, widths, strict=True))])
            )
        return "\n".join(lines)


def _column_key(column: str) -> tuple:
    protocol, _, name = column.partition("/")
    rank = PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
    return (rank, protocol, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)])


def _row_key(encoder: str) -> tuple:
    base = encoder.split(":")[0]
    return (ENCODER_ORDER.index(base) if base in ENCODER_ORDER else len(ENCODER_ORDER), encoder)


def compare(dataset: str, run_id: str | None = None) -> Comparison:
    """The evaluations of pipeline run `run_id` (default: the newest one with evaluations) of
    experiment `slim-<dataset>`. Raises ValueError when there is nothing to compare."""
    uri = tracking_uri()
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ValueError(f"no MLflow store at {db}: run the pipeline first (or set MLFLOW_TRACKING_URI)")
    c, name = client(), f"slim-{dataset}"
    found = c.get_experiment_by_name(name)
    if found is None:
        raise ValueError(f"no experiment {name!r} in {uri}: run the pipeline on {dataset} first")
    evaluated = f"tags.`{PROTOCOL_TAG}` LIKE '%' and attributes.status = 'FINISHED'"
    if run_id is None:
        newest = c.search_runs(
            [found.experiment_id],
            filter_string=evaluated,
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if not newest or PARENT_TAG not in newest[0].data.tags:
            raise ValueError(
                f"no finished evaluation run under a pipeline run in experiment {name!r} ({uri})"
            )
        run_id = newest[0].data.tags[PARENT_TAG]
    from mlflow.exceptions import MlflowException

    try:
        parent = c.get_run(run_id)
    except MlflowException as exc:
        raise ValueError(f"no run {run_id!r} in {uri}") from exc
    rows: dict[str, dict[str, float]] = {}
    for run in _children(c, found.experiment_id, run_id, evaluated):  # oldest first: a rerun wins
        protocol, encoder = run.data.tags[PROTOCOL_TAG], run.data.tags.get(ENCODER_TAG, "?")
        for key, value in run.data.metrics.items():
            head, _, metric = key.partition("/")
            if head == protocol and ACCURACY_METRIC.fullmatch(metric) and math.isfinite(value):
                rows.setdefault(encoder, {})[key] = value
    if not rows:
        raise ValueError(f"pipeline run {run_id} has no finished evaluation runs")
    columns = tuple(sorted({c for values in rows.values() for c in values}, key=_column_key))
    return Comparison(
        name,
        run_id,
        parent.info.run_name,
        parent.info.status,
        columns,
        {e: rows[e] for e in sorted(rows, key=_row_key)},
    )
