"""The MLflow model registry: log and register encoders, move the `champion` alias through a
promotion gate, roll it back, and load a registered encoder for inference.

With `pipeline/tracking.py` the only module that imports mlflow. Aliases, not stages (stages are
deprecated): a new version gets `challenger`; `promote` moves `champion` to it only if it passes
the gate (see `decide`): it must clear the floor of the anchors measured in the same DAG run (tags
`anchor.<anchor>.<protocol>.<metric>`), also when there is no champion yet, and beat the champion.
Every decision is written as tags of the candidate version (`promotion.decision`,
`promotion.reasons`, `promotion.compared_to`, `promotion.time`), and the registered model keeps the
champion history as two tags: `champion.stack` (JSON list of versions, the last is the champion;
`rollback` pops it) and `champion.history` (JSON list of events).

Promotions and rollbacks are read-modify-write sequences on the registry, so they run under an
exclusive `fcntl.flock` (see `lock_path`): two at once leave exactly one champion and a consistent
history.

Loading (`load_model`) accepts only models logged in mlflow's `pt2` format (torch.export); mlflow
checks that the archive holds nothing but tensors, JSON and text before `torch.export.load` reads
it, unless `MLFLOW_ALLOW_PICKLE_DESERIALIZATION` is set (never set it for registry loads).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import tracking
from pipeline.params import DEFAULT_PARAMS, ParamsError, RegistryParams
from pipeline.paths import REPO_ROOT

if TYPE_CHECKING:  # mlflow and torch are imported inside the functions: importing them costs seconds
    import torch
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from torch import nn

    from pipeline.embed import RegisteredEncoder

CHAMPION = "champion"
CHALLENGER = "challenger"
STACK_TAG = "champion.stack"
HISTORY_TAG = "champion.history"
HISTORY_MAX = 200  # events kept in the `champion.history` tag (its value is limited to 100k chars)
METRIC_PREFIX = "metric."
ANCHOR_PREFIX = "anchor."  # anchor.<anchor>.<protocol>.<metric>: the anchors measured in the same DAG run
ANCHORS = ("random", "raw")  # the frozen-feature anchors evaluate.dag.anchors can run
LOCK_ENV = "SLIM_REGISTRY_LOCK"
LOCK_TIMEOUT_ENV = "SLIM_REGISTRY_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 600.0
ALLOW_PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


class RegistryError(ValueError):
    """A registry operation cannot proceed; the message says what is missing or wrong."""


def settings(params_path: Path = DEFAULT_PARAMS) -> RegistryParams:
    """params.yaml's `registry` section, validated on its own (its defaults where it is absent).

    Only this section: validating the whole file builds model configs, which imports torch (seconds
    per `slim promote`); `slim check-params` and the DVC stages validate the rest."""
    import yaml
    from pydantic import ValidationError

    path = Path(params_path)
    try:
        section = (yaml.safe_load(path.read_text()) or {}).get("registry") or {}
        return RegistryParams.model_validate(section)
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ParamsError(f"{path}: cannot read parameters: {exc}") from exc
    except ValidationError as exc:
        raise ParamsError(f"{path}: invalid `registry` parameters:\n{exc}") from exc


def connect() -> MlflowClient:
    """A client of the configured store (`tracking.tracking_uri()`, tables created on first use);
    also points mlflow's fluent API (`models:/` URIs) at it."""
    import mlflow

    mlflow.set_registry_uri(tracking.tracking_uri())  # first: a client takes the registry URI set now
    client = tracking.client()
    return client


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- logging, registering


def encoder_signature(num_frames: int, num_joints: int, feature_dim: int, channels: int = 3) -> ModelSignature:
    """(B, 3, T, J) float32 clips -> (B, feature_dim) float32 features; B is dynamic (-1)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, num_frames, num_joints))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, feature_dim))]),
    )


def log_encoder(
    encoder: nn.Module, example: torch.Tensor, *, layout: str, name: str = "encoder", metadata: dict | None = None
):
    """Log `encoder` with mlflow's pytorch flavour in the default `pt2` format (torch.export) under
    the active run; returns mlflow's ModelInfo (`.model_uri` is `models:/m-<id>`).

    `example` is a batch of real clips `(B, 3, T, J)` with B >= 2: torch.export specialises a size-1
    dimension, and a batch-1 example would freeze the batch size of the exported graph. The model's
    metadata records `layout` (skeleton layout name), `num_frames`, `feature_dim` and
    `normalise_view` (whether clips must be view-normalised before they reach the model).
    """
    import mlflow
    import torch

    if example.ndim != 4 or example.shape[0] < 2:
        raise RegistryError(
            f"input example must be a batch of >= 2 clips (B, 3, T, J), got {tuple(example.shape)}: "
            "a batch-1 example freezes the batch dimension of the exported model"
        )
    if mlflow.active_run() is None:
        raise RegistryError("log_encoder needs an active MLflow run (tracking.stage_run)")
    encoder = encoder.eval()
    with torch.no_grad():
        out = encoder(example)
    signature = encoder_signature(example.shape[2], example.shape[3], out.shape[1], example.shape[1])
    return mlflow.pytorch.log_model(
        encoder,
        name=name,
        signature=signature,
        input_example=example.detach().cpu().numpy().astype(np.float32),
        serialization_format="pt2",
        # explicit requirements: inferring them loads the model again in a subprocess (~10 s)
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        metadata={
            "layout": layout,
            "num_frames": int(example.shape[2]),
            "feature_dim": int(out.shape[1]),
            "normalise_view": bool(getattr(encoder, "normalise_view", False)),
            **(metadata or {}),
        },
    )


def log_metrics(metrics: Mapping[str, float]) -> None:
    """Log metrics to the active run (nothing without one)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def _tag_value(value) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def register_version(
    model_uri: str, model_name: str, tags: Mapping[str, object], *, alias: str | None = CHALLENGER
) -> int:
    """Register `model_uri` as a new version of `model_name` with `tags`; give it `alias`; return the
    version number that the registration returned."""
    import mlflow

    client = connect()
    version = int(
        mlflow.register_model(model_uri, model_name, tags={k: _tag_value(v) for k, v in tags.items()}).version
    )
    if alias:
        client.set_registered_model_alias(model_name, alias, str(version))
    return version


# ----------------------------------------------------------------------------- reading the registry


def _version_number(value) -> int:
    """Versions and alias targets come back as ints from the embedded store, strings from a server."""
    return int(value)


def parse_ref(ref: str | int | None) -> int | str:
    """`3` / "3" -> 3 (a version number); any other string is an alias; None -> `challenger`."""
    if ref is None:
        return CHALLENGER
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        return int(ref)
    if not isinstance(ref, str) or not re.fullmatch(r"[A-Za-z][\w-]*", ref):
        raise RegistryError(f"version {ref!r}: give a version number or an alias (e.g. challenger)")
    return ref


def get_version(model_name: str, ref: str | int | None, client: MlflowClient | None = None):
    """The ModelVersion of `model_name` that `ref` (number or alias) names; a clear error if none."""
    from mlflow.exceptions import MlflowException

    client = client or connect()
    ref = parse_ref(ref)
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        raise RegistryError(
            f"registered model {model_name!r} does not exist in {tracking.tracking_uri()} "
            f"(run `slim register` or `dvc repro` first)"
        ) from exc
    try:
        if isinstance(ref, int):
            return client.get_model_version(model_name, str(ref))
        return client.get_model_version_by_alias(model_name, ref)
    except MlflowException as exc:
        what = f"version {ref}" if isinstance(ref, int) else f"alias {ref!r}"
        raise RegistryError(f"registered model {model_name!r} has no {what}") from exc


def aliases(model_name: str, client: MlflowClient | None = None) -> dict[str, int]:
    client = client or connect()
    return {k: _version_number(v) for k, v in client.get_registered_model(model_name).aliases.items()}


def version_metrics(version) -> dict[str, float]:
    """The eval metrics of a ModelVersion from its `metric.<protocol>.<name>` tags."""
    out = {}
    for key, value in version.tags.items():
        if key.startswith(METRIC_PREFIX):
            try:
                out[key[len(METRIC_PREFIX) :]] = float(value)
            except ValueError:
                continue
    return out


def version_anchors(version) -> dict[str, dict[str, float]]:
    """{anchor: {`<protocol>.<name>`: value}} of a ModelVersion from its `anchor.<anchor>.<protocol>.<name>`
    tags: what the anchors scored in the DAG run that registered it."""
    out: dict[str, dict[str, float]] = {}
    for key, value in version.tags.items():
        anchor, _, metric = key.removeprefix(ANCHOR_PREFIX).partition(".")
        if not key.startswith(ANCHOR_PREFIX) or not metric:
            continue
        try:
            out.setdefault(anchor, {})[metric] = float(value)
        except ValueError:
            continue
    return out


def champion_stack(model_name: str, client: MlflowClient | None = None) -> list[int]:
    """Champions in the order they were crowned; the last is the current one (rollback pops it)."""
    client = client or connect()
    raw = client.get_registered_model(model_name).tags.get(STACK_TAG)
    return [int(v) for v in json.loads(raw)] if raw else []


def champion_history(model_name: str, client: MlflowClient | None = None) -> list[dict]:
    """Promotion/rollback events, oldest first."""
    client = client or connect()
    raw = client.get_registered_model(model_name).tags.get(HISTORY_TAG)
    return json.loads(raw) if raw else []


# ----------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateRules:
    """Promote only if the candidate beats every anchor of `floor_anchors` on `primary_metric`
    (`<protocol>.<metric>`, e.g. `linear.top1`) by at least `floor_margin` (and strictly), also when
    there is no champion; and beats the champion on it by at least `margin` (and strictly), and no
    other protocol's top-1 drops by more than `tolerance` (absolute, accuracies as fractions).

    The defaults enforce no floor: library callers opt in; `slim promote` takes params.yaml's
    `registry` section (`from_settings`), whose default floor is the random-init encoder."""

    primary_metric: str = "linear.top1"
    margin: float = 0.0
    tolerance: float = 0.02
    floor_anchors: tuple[str, ...] = ()
    floor_margin: float = 0.0

    @classmethod
    def from_settings(cls, settings: RegistryParams) -> GateRules:
        """The rules params.yaml's `registry` section sets."""
        return cls(
            settings.primary_metric, settings.margin, settings.tolerance, tuple(settings.floor_anchors),
            settings.floor_margin,
        )  # fmt: skip


def _protocol(metric: str) -> str:
    return metric.split(".", 1)[0]


def _beats(delta: float, margin: float) -> bool:
    """Strictly better, and by at least `margin` (a tie never passes, even with margin 0)."""
    return delta > 0 and delta >= margin - 1e-12


def anchor_floor(value: float, anchors: Mapping[str, Mapping[str, float]], rules: GateRules) -> tuple[bool, str]:
    """(clears the floor?, one line) for the candidate's `value` of the primary metric against the
    anchors measured with it (`version_anchors`). The line states every anchor, enforced or not, so
    a decision always shows where the candidate stands: e.g. `anchor floor passed: linear.top1 0.6520
    vs random 0.5980 (+0.0540, floor +0.05: pass); vs raw 0.7600 (-0.1080, not enforced)`. An enforced
    anchor that was not measured fails the floor (nothing says the candidate beats it)."""
    key = rules.primary_metric
    names = [*rules.floor_anchors, *sorted((set(ANCHORS) | set(anchors)) - set(rules.floor_anchors))]
    ok, parts = True, []
    for name in names:
        enforced = name in rules.floor_anchors
        score = anchors.get(name, {}).get(key)
        if score is None:
            ok = ok and not enforced
            parts.append(
                f"vs {name}: not measured with this version (floor: fail; register it with {name} in "
                "evaluate.dag.anchors)" if enforced else f"vs {name}: not measured (not enforced)"
            )
            continue
        delta = value - score
        if enforced:
            passed = _beats(delta, rules.floor_margin)
            ok = ok and passed
            verdict = f"floor {rules.floor_margin:+g}: {'pass' if passed else 'fail'}"
        else:
            verdict = "not enforced"
        parts.append(f"vs {name} {score:.4f} ({delta:+.4f}, {verdict})")
    head = (
        "no anchor floor" if not rules.floor_anchors else f"anchor floor {'passed' if ok else 'failed'}"
    )
    return ok, f"{head}: {key} {value:.4f} " + "; ".join(parts)


def _against_champion(
    candidate: Mapping[str, float], champion: Mapping[str, float], rules: GateRules
) -> tuple[bool, list[str]]:
    """The primary metric by `margin`, and no other protocol's top-1 down by more than `tolerance`."""
    key = rules.primary_metric
    if key not in champion:
        return False, [f"champion has no {key}; cannot compare (use --force to promote anyway)"]
    reasons: list[str] = []
    ok = True
    delta = candidate[key] - champion[key]
    text = f"{key} {candidate[key]:.4f} vs champion {champion[key]:.4f} ({delta:+.4f})"
    if _beats(delta, rules.margin):
        reasons.append(f"{text}: beats it by >= margin {rules.margin:g}")
    else:
        ok = False
        reasons.append(f"{text}: does not beat it by margin {rules.margin:g}")
    for other in sorted(champion):
        if not other.endswith(".top1") or other.count(".") != 1 or _protocol(other) == _protocol(key):
            continue
        if other not in candidate:
            ok = False
            reasons.append(f"{other}: the champion has it, the candidate not")
            continue
        drop = champion[other] - candidate[other]
        line = f"{other} {candidate[other]:.4f} vs {champion[other]:.4f} ({-drop:+.4f})"
        if drop > rules.tolerance + 1e-12:
            ok = False
            reasons.append(f"{line}: regresses beyond tolerance {rules.tolerance:g}")
        else:
            reasons.append(f"{line}: within tolerance {rules.tolerance:g}")
    return ok, reasons


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    rules: GateRules,
    anchors: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[bool, list[str]]:
    """(promote?, reasons) for `candidate` against the `anchors` it was measured with (the floor,
    first reason) and the `champion` (None: there is none yet, the floor alone decides). Metric keys
    are `<protocol>.<metric>`.

    Compared besides the primary metric: `<protocol>.top1` of every other protocol the champion has;
    a protocol the candidate lacks is a refusal (it could hide a regression).
    """
    key = rules.primary_metric
    if key not in candidate:
        return False, [f"candidate has no {key} (tags {METRIC_PREFIX}{key}); cannot compare"]
    ok, line = anchor_floor(candidate[key], anchors or {}, rules)
    if champion is None:
        return ok, [line, "no champion yet"]
    beats, reasons = _against_champion(candidate, champion, rules)
    return ok and beats, [line, *reasons]


# ----------------------------------------------------------------------------- the lock


def lock_path(uri: str | None = None) -> Path:
    """Where promotions of the store at `uri` serialise: `$SLIM_REGISTRY_LOCK` if set; beside the
    database for a `sqlite:///` store (`.<db>.promote.lock`); else `<repo>/.slim/registry-<hash of
    uri>.lock`. A remote server shared by several hosts needs `SLIM_REGISTRY_LOCK` on a filesystem
    they all see (and that supports flock), or promotions from different hosts are not serialised."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV]).expanduser()
    uri = uri or tracking.tracking_uri()
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        return db.with_name(f".{db.name}.promote.lock")
    return REPO_ROOT / ".slim" / f"registry-{hashlib.sha256(uri.encode()).hexdigest()[:12]}.lock"


@contextlib.contextmanager
def promotion_lock(path: Path | None = None, timeout_s: float | None = None) -> Iterator[Path]:
    """Hold an exclusive flock on `path` (default `lock_path()`); say so on stderr while waiting."""
    path = Path(path or lock_path())
    if timeout_s is None:
        timeout_s = float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for the promotion lock {path} (another promotion is running)", file=sys.stderr, flush=True)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(
                            f"promotion lock {path} still held after {timeout_s:g} s; if no promotion is "
                            f"running, another process holds it (set {LOCK_TIMEOUT_ENV} to wait longer)"
                        ) from None
                    time.sleep(0.05)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- promotion, rollback


@dataclass
class Decision:
    """The outcome of `promote` / `rollback`, as printed and written to tags."""

    model: str
    decision: str  # first | promoted | forced | refused | unchanged | rolled_back
    version: int  # the candidate (promote) or the restored champion (rollback)
    champion: int | None  # the champion afterwards (None: a refused first candidate leaves none)
    previous_champion: int | None
    reasons: list[str] = field(default_factory=list)
    time: str = field(default_factory=_now)

    @property
    def changed(self) -> bool:
        return self.decision in ("first", "promoted", "forced", "rolled_back")

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        was = "none before" if self.previous_champion is None else f"was v{self.previous_champion}"
        stays = (
            f"{CHAMPION} stays v{self.champion}" if self.champion is not None
            else f"there is still no {CHAMPION} (no version has passed the gate)"
        )  # fmt: skip
        head = {
            "first": f"{self.model} v{self.version} is the first champion",
            "promoted": f"{self.model} v{self.version} promoted to {CHAMPION} (was v{self.previous_champion})",
            "forced": f"{self.model} v{self.version} forced to {CHAMPION} ({was})",
            "refused": f"{self.model} v{self.version} refused: {stays}",
            "unchanged": f"{self.model} v{self.version} is already {CHAMPION}: nothing to do",
            "rolled_back": f"{self.model}: {CHAMPION} rolled back from v{self.previous_champion} to v{self.version}",
        }[self.decision]
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


def _write_state(client, name: str, stack: list[int], history: list[dict], event: dict) -> None:
    history = [*history, event][-HISTORY_MAX:]
    client.set_registered_model_tag(name, STACK_TAG, json.dumps(stack))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def _decision_tags(client, name: str, version: int, decision: Decision, compared_to: int | None) -> None:
    tags = {
        "promotion.decision": decision.decision,
        "promotion.reasons": "; ".join(decision.reasons) or "-",
        "promotion.compared_to": "none" if compared_to is None else str(compared_to),
        "promotion.time": decision.time,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def _current(client, name: str) -> tuple[int | None, list[int], list[dict]]:
    """(champion alias target, stack, history), the stack brought in line with the alias if someone
    moved `champion` by hand."""
    model = client.get_registered_model(name)
    champion = model.aliases.get(CHAMPION)
    champion = None if champion is None else _version_number(champion)
    stack = [int(v) for v in json.loads(model.tags.get(STACK_TAG) or "[]")]
    history = json.loads(model.tags.get(HISTORY_TAG) or "[]")
    if champion is not None and (not stack or stack[-1] != champion):
        stack.append(champion)
    return champion, stack, history


def promote(
    model_name: str,
    ref: str | int | None = CHALLENGER,
    rules: GateRules = GateRules(),
    *,
    force: bool = False,
    lock: Path | None = None,
) -> Decision:
    """Move `champion` to version `ref` (number or alias) if it passes the gate (`decide`): the anchor
    floor always, the champion when there is one (so a first version that does not clear the floor
    is refused and leaves no champion). `force` promotes a refused candidate anyway (decision
    `forced`, the gate's reasons kept). Writes the decision as tags of the candidate and records it
    in the champion history. Serialised by `promotion_lock`."""
    client = connect()
    with promotion_lock(lock):
        candidate = get_version(model_name, ref, client)
        version = _version_number(candidate.version)
        champion, stack, history = _current(client, model_name)
        if champion == version:
            return Decision(model_name, "unchanged", version, champion, champion, [f"v{version} is already {CHAMPION}"])
        champion_metrics = None if champion is None else version_metrics(get_version(model_name, champion, client))
        ok, reasons = decide(version_metrics(candidate), champion_metrics, rules, version_anchors(candidate))
        if force and not ok:
            decision = Decision(model_name, "forced", version, version, champion, ["--force", *reasons])
        elif ok:
            action = "first" if champion is None else "promoted"
            decision = Decision(model_name, action, version, version, champion, reasons)
        else:
            decision = Decision(model_name, "refused", version, champion, champion, reasons)
        _decision_tags(client, model_name, version, decision, champion)
        event = {"time": decision.time, "action": decision.decision, "version": version, "previous": champion}
        if decision.changed:
            client.set_registered_model_alias(model_name, CHAMPION, str(version))
            stack.append(version)
        _write_state(client, model_name, stack, history, event)
        return decision


def rollback(model_name: str, *, lock: Path | None = None) -> Decision:
    """Give `champion` back to the previous champion (pop the champion stack)."""
    from mlflow.exceptions import MlflowException

    client = connect()
    with promotion_lock(lock):
        try:
            champion, stack, history = _current(client, model_name)
        except MlflowException as exc:
            raise RegistryError(f"registered model {model_name!r} does not exist in {tracking.tracking_uri()}") from exc
        if champion is None:
            raise RegistryError(f"{model_name} has no {CHAMPION}: nothing to roll back")
        if len(stack) < 2:
            raise RegistryError(f"{model_name} v{champion} is the only champion so far: no previous one to restore")
        stack.pop()
        restored = stack[-1]
        get_version(model_name, restored, client)  # still exists?
        decision = Decision(
            model_name, "rolled_back", restored, restored, champion,
            [f"v{champion} demoted, v{restored} (the champion before it) restored"],
        )  # fmt: skip
        client.set_registered_model_alias(model_name, CHAMPION, str(restored))
        _decision_tags(client, model_name, champion, decision, restored)
        event = {"time": decision.time, "action": "rollback", "version": restored, "previous": champion}
        _write_state(client, model_name, stack, history, event)
        return decision


# ----------------------------------------------------------------------------- loading


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def resolve_uri(uri: str) -> dict:
    """Registry facts about a `models:/` URI: name, version (an alias resolved now) and the version's
    tags; `{}` for other URIs."""
    match = _MODELS_URI.match(uri)
    if not match:
        return {}
    name = match["name"]
    if name.startswith("m-") and match["alias"] is None and match["version"] is None:
        return {}
    version = get_version(name, match["alias"] or int(match["version"]))
    return {"name": name, "version": _version_number(version.version), "run_id": version.run_id, "tags": dict(version.tags)}


def load_model(uri: str) -> RegisteredEncoder:
    """Load a registered/logged encoder (`models:/slim-encoder@champion`, `models:/slim-encoder/3`,
    `models:/m-<id>`, `runs:/...`). Only the `pt2` format is accepted (see the module docstring)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from pipeline.embed import RegisteredEncoder

    connect()
    facts = resolve_uri(uri)
    if facts:  # pin the alias: the version resolved above, even if the alias moves meanwhile
        uri = f"models:/{facts['name']}/{facts['version']}"
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        info = Model.load(local)
    except MlflowException as exc:
        raise RegistryError(f"cannot load {uri}: {exc.message}") from exc
    if "pytorch" not in info.flavors:
        raise RegistryError(f"{uri} is not a pytorch model (flavours: {', '.join(info.flavors)})")
    data = local / info.flavors["pytorch"].get("model_data", "data")
    if not (data / "model.pt2").is_file():
        raise RegistryError(
            f"{uri} is not in mlflow's pt2 (torch.export) format; refusing to unpickle a pickled model"
        )
    if os.environ.get(ALLOW_PICKLE_ENV, "").lower() in ("1", "true", "yes"):
        raise RegistryError(f"unset {ALLOW_PICKLE_ENV}: registry loads must keep mlflow's pickle-free check")
    graph = mlflow.pytorch.load_model(str(local), map_location="cpu")
    spec = info.signature.inputs.inputs[0].shape if info.signature else None
    out = info.signature.outputs.inputs[0].shape if info.signature and info.signature.outputs else None
    if spec is None or len(spec) != 4 or out is None:
        raise RegistryError(f"{uri}: the model has no (B, 3, T, J) -> (B, D) tensor signature")
    metadata = info.metadata or {}
    layout = metadata.get("layout") or facts.get("tags", {}).get("layout")
    normalise = bool(metadata.get("normalise_view", False))  # models logged before it was recorded: camera view
    return RegisteredEncoder(
        graph, int(spec[2]), int(spec[3]), int(out[1]), layout, {"uri": uri, **facts}, normalise
    )


def load_input_example(uri: str) -> np.ndarray:
    """The input example logged with a model (a batch of real clips)."""
    import mlflow
    from mlflow.models import Model

    connect()
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    example = Model.load(local).load_input_example(local)
    if example is None:
        raise RegistryError(f"{uri} was logged without an input example")
    return np.asarray(example, dtype=np.float32)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
