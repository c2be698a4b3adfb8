"""Flow `evaluate`: evaluate a registered encoder version (`models:/slim-encoder/<v>` or
`models:/slim-encoder@<alias>`) on chosen protocols and split, e.g. when a new benchmark split is added.

The registry holds the encoder as a torch.export graph, which cannot be fine-tuned; the evaluation
commands take the `encoder.pt` it was logged from. The registered version names that file and its
sha256 (tags `source.encoder`, `source.encoder_sha256`); the bytes come from the workspace if the file
there still matches, else from the DVC cache (by the md5 in tag `source.encoder_md5` if present, or
that dvc.lock or the `dvc.lock.yaml` the version's MLflow run logged record for that file, else by
looking at every archive in the cache), and are checked against the sha256 in every case.

Frozen protocols (linear, knn) read one features file (`slim features`), as in the DAG; fine-tuning
protocols (semi1, semi10, finetune) fine-tune the encoder. Results go to
`reports/versions/<model>-v<N>/<split>/<protocol>/`, to MLflow (a parent run `evaluate <model> v<N>`)
and to the version's tags `eval.<split>.<protocol>.top1`.

    python -m flows.evaluate --model models:/slim-encoder@champion --protocol linear --protocol knn
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows import dag, report, stages
from flows.project import project_root

Protocol = Literal["linear", "knn", "semi1", "semi10", "finetune"]
FROZEN = ("linear", "knn")
DEFAULT_PROTOCOLS = ["linear", "knn"]
MODEL_URI = r"^models:/[A-Za-z0-9][A-Za-z0-9._-]*(/[0-9]+|@[A-Za-z][\w-]*)$"


def _cache_path(root: Path, md5: str) -> Path:
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _cached_archives(root: Path):
    """Every zip archive (torch.save writes one) in the DVC cache, newest first: the last resort when
    nothing records the md5 of a version's encoder."""
    files = [p for p in (root / ".dvc" / "cache" / "files" / "md5").glob("*/*") if p.is_file()]
    for path in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
        with open(path, "rb") as handle:
            if handle.read(4) == b"PK\x03\x04":
                yield path


def _locked_md5s(lock_text: str, path: str) -> list[str]:
    """md5s that a dvc.lock (or an excerpt of it) records for output `path`."""
    try:
        doc = yaml.safe_load(lock_text) or {}
    except yaml.YAMLError:
        return []
    return [
        out["md5"]
        for entry in (doc.get("stages") or {}).values()
        for out in entry.get("outs", [])
        if out.get("path") == path and out.get("md5")
    ]


@task(name="resolve-version", task_run_name="resolve {model}", cache_policy=NO_CACHE,
      retry_condition_fn=stages.transient_only, **stages.retry_options(2, 10))  # fmt: skip
def resolve(root: Path, model: str, dest: Path) -> dict:
    """The registered version `model` names, and its encoder.pt copied to `dest` (sha256-checked)."""
    from pipeline import registry, tracking

    facts = registry.resolve_uri(model)
    if not facts:
        raise ValueError(
            f"{model}: not a registered model URI (models:/<name>/<version> or models:/<name>@<alias>)"
        )
    tags = facts["tags"]
    sha, source = tags.get("source.encoder_sha256"), tags.get("source.encoder")
    if not sha or not source:
        raise ValueError(
            f"{facts['name']} v{facts['version']} has no source.encoder / source.encoder_sha256 tags"
        )
    candidates = [root / source]
    md5s = _locked_md5s((root / "dvc.lock").read_text(), source) if (root / "dvc.lock").is_file() else []
    if facts.get("run_id") and tracking.enabled():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = tracking.client().download_artifacts(facts["run_id"], "dvc.lock.yaml", tmp)
                md5s += _locked_md5s(Path(local).read_text(), source)
            except Exception as exc:  # noqa: BLE001  (no such artifact: the other places may still have it)
                get_run_logger().info("run %s has no dvc.lock.yaml artifact (%s)", facts["run_id"], exc)
    if tags.get("source.encoder_md5"):
        md5s.insert(0, tags["source.encoder_md5"])
    candidates += [_cache_path(root, md5) for md5 in dict.fromkeys(md5s)]
    for candidate in [*candidates, *_cached_archives(root)]:  # the last: any zip in the DVC cache
        if candidate.is_file() and registry.sha256_file(candidate) == sha:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(candidate, dest)
            get_run_logger().info("%s v%s: encoder from %s", facts["name"], facts["version"], candidate)
            return {**facts, "encoder": str(dest), "encoder_from": str(candidate)}
    raise FileNotFoundError(
        f"{facts['name']} v{facts['version']}: no file with its encoder's sha256 {sha[:12]}... in the workspace "
        f"({source}) or the DVC cache ({len(md5s)} candidate md5s); `dvc pull` the commit it was built from"
    )


@flow(name="evaluate", flow_run_name="evaluate {model}", task_runner=ThreadPoolTaskRunner(max_workers=16),
      description="Evaluate a registered encoder version on chosen protocols and split.", validate_parameters=True)  # fmt: skip
def evaluate(
    model: Annotated[
        str, Field(pattern=MODEL_URI, description="models:/<name>/<version> or models:/<name>@<alias>")
    ] = "models:/slim-encoder@champion",
    protocols: Annotated[
        list[Protocol], Field(min_length=1, description="Protocols to run")
    ] = DEFAULT_PROTOCOLS,
    split: Annotated[
        str, Field(pattern=r"^[\w-]+$", description="A protocol split of params.yaml `protocols`")
    ] = "ucla-xview",
    concurrency: Annotated[int, Field(ge=1, le=64, description="Evaluation commands at once")] = 2,
    timeout_h: Annotated[float, Field(gt=0, description="Kill an evaluation after this many hours")] = 6.0,
    project_dir: Annotated[str | None, Field(description="Project folder (default: this checkout)")] = None,
) -> dict:
    from pipeline import registry, tracking

    root = project_root(project_dir)
    protocols = list(dict.fromkeys(protocols))
    by_name = {s.name: s for s in dag.load_dag(root)}
    split_stage = by_name.get(f"split@{split}")
    if split_stage is None:
        known = sorted(n.split("@", 1)[1] for n in by_name if n.startswith("split@"))
        raise ValueError(
            f"no DVC stage split@{split}: known splits {', '.join(known)} (params.yaml `protocols`)"
        )
    split_file = split_stage.outs[0]
    data = next(d for d in split_stage.deps if d.endswith(".parquet"))
    dataset = Path(data).parent.name
    stages.repro(root, f"split@{split}", [split_stage.name])  # the data, if missing or stale

    facts = resolve(root, model, root / "reports" / "versions" / "pending" / "encoder.pt")
    name, version = facts["name"], facts["version"]
    out = root / "reports" / "versions" / f"{name}-v{version}"
    encoder = out / "encoder.pt"
    out.mkdir(parents=True, exist_ok=True)
    shutil.move(facts["encoder"], encoder)
    shutil.rmtree(root / "reports" / "versions" / "pending", ignore_errors=True)

    common = ["--split", split_file, "--data", data, "--no-progress"]
    stages.set_concurrency(concurrency)
    timeout_s = timeout_h * 3600
    runner = stages.command.with_options(timeout_seconds=timeout_s + 60)
    with tracking.pipeline_run(dataset, name=f"evaluate {name} v{version}") as parent_id:
        futures = {}
        features, npz = None, None
        if any(p in FROZEN for p in protocols):
            npz = (out / split / "features.npz").relative_to(root)
            cmd = ["slim", "features", "--encoder", str(encoder.relative_to(root)), "--out", str(npz), *common]  # fmt: skip
            features = runner.submit(root, f"features v{version} {split}", [shlex.join(cmd)], timeout_s)
        for protocol in protocols:
            dest = str((out / split / protocol).relative_to(root))
            source = (
                ["--features", str(npz)]
                if protocol in FROZEN
                else ["--encoder", str(encoder.relative_to(root))]
            )
            cmd = ["slim", "evaluate", "--protocol", protocol, *source, "--out", dest, *common]
            futures[protocol] = runner.submit(
                root, f"{protocol} v{version} {split}", [shlex.join(cmd)], timeout_s,
                wait_for=[features] if protocol in FROZEN else [],
            )  # fmt: skip
        failed = []
        for protocol, future in futures.items():
            future.wait()
            if not future.state.is_completed():
                failed.append(f"{protocol} ({future.state.name}: {future.state.message})")
        if failed:
            raise RuntimeError("evaluations failed: " + "; ".join(failed))
    metrics = {p: json.loads((out / split / p / "metrics.json").read_text()) for p in protocols}
    if tracking.enabled():
        client = registry.connect()
        for protocol, doc in metrics.items():
            client.set_model_version_tag(
                name, str(version), f"eval.{split}.{protocol}.top1", repr(float(doc["top1"]))
            )
    table = "\n".join(
        ["| protocol | top-1 (%) | top-5 (%) |", "|---|---|---|"]
        + [f"| {p} | {report.pct(d.get('top1'))} | {report.pct(d.get('top5'))} |" for p, d in metrics.items()]
    )
    uri = tracking.tracking_uri()
    create_markdown_artifact(
        "\n".join([
            f"# evaluate {name} v{version} on {split}",
            "",
            f"- model: `{model}` -> v{version} (run {report.run_link(uri, None, facts.get('run_id'))})",
            f"- encoder: `{encoder.relative_to(root)}` (from `{facts['encoder_from']}`)",
            f"- MLflow pipeline run: {report.run_link(uri, None, parent_id)}; version tags `eval.{split}.<protocol>.top1`",
            "",
            table,
        ]),
        key="evaluate-summary",
        description=f"evaluation of {name} v{version}",
    )  # fmt: skip
    return {"model": name, "version": version, "split": split, "parent_run_id": parent_id,
            "metrics": {p: {k: d.get(k) for k in ("top1", "top5")} for p, d in metrics.items()},
            "reports": str(out / split)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models:/slim-encoder@champion")
    parser.add_argument(
        "--protocol", dest="protocols", action="append", choices=list(typing.get_args(Protocol))
    )
    parser.add_argument("--split", default="ucla-xview")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    state = evaluate(model=args.model, protocols=args.protocols or DEFAULT_PROTOCOLS, split=args.split,
                     concurrency=args.concurrency, return_state=True)  # fmt: skip
    return report.print_final_state(state)


if __name__ == "__main__":
    sys.exit(main())
