"""DVC stages `evaluate@<protocol>-<method>`, `anchor@<protocol>-<anchor>`, `supervised@<protocol>`:
score one encoder under one downstream protocol (slim.evaluation).

Protocols: `linear` (linear probe on frozen clip features) and `knn` (weighted kNN on them);
`semi1`/`semi10` (fine-tuning on a fixed, class-balanced 1%/10% of the training labels) and
`finetune` (on all of them). Encoders: a pretrained `encoder.pt`, or an anchor computed here:
`raw` (the joint coordinates themselves, frozen protocols), `random:<method>` (a random-init
encoder, frozen protocols) and `supervised:<method>` (the same encoder trained from scratch,
fine-tuning protocols); anchors take the encoder config of params.yaml's active pretrain profile.
Nothing assumes the pretraining dataset: any split of any ingested dataset works, provided its
skeleton layout is the encoder's.

Writes `metrics.json`, `per_class.csv`, `predictions.csv`, `confusion.png` and `embedding.png` (a
t-SNE of the test features) into the output folder, each atomically.
"""

from __future__ import annotations

import contextlib
import csv
import json
import time
import typing
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from pipeline import tracking
from pipeline.params import (
    DEFAULT_PARAMS,
    EvaluateProfile,
    FinetuneProtocol,
    FrozenProtocol,
    load_profile,
)
from pipeline.split import read_split
from slim.atomic import atomic_path, atomic_write_text
from slim.checkpoint import load_checkpoint
from slim.data.schema import read_sequences
from slim.data.transforms import eval_clip, prepare_clip
from slim.evaluation import (
    FinetuneConfig,
    LinearProbeConfig,
    SplitFeatures,
    class_balanced_subset,
    confusion_matrix,
    extract_features,
    finetune,
    knn_evaluate,
    knn_scores,
    linear_probe,
    load_features,
    pca_2d,
    per_class_accuracy,
    plot_confusion_matrix,
    plot_embedding,
    raw_joint_features,
)
from slim.export import load_encoder
from slim.layouts import Layout, get_layout
from slim.models import ENCODERS, build
from slim.train import model_config

FROZEN_PROTOCOLS: tuple[str, ...] = typing.get_args(FrozenProtocol)
FINETUNE_PROTOCOLS: tuple[str, ...] = typing.get_args(FinetuneProtocol)
PROTOCOLS = FROZEN_PROTOCOLS + FINETUNE_PROTOCOLS
ANCHORS = ("random", "supervised")  # followed by `:<method>`; `raw` stands alone
EMBED_MAX = 2000  # test samples in the embedding figure


# ----------------------------------------------------------------------------- what to evaluate


@dataclass(frozen=True)
class EncoderSpec:
    """`raw`, `random:<method>`, `supervised:<method>` or a pretrained encoder file."""

    kind: str  # "raw" | "random" | "supervised" | "pretrained"
    method: str | None = None
    path: Path | None = None
    layout: str | None = None  # a pretrained encoder's

    @property
    def name(self) -> str:
        """The name reports use: raw, random:slim, supervised:slim, or the file's method."""
        if self.kind == "pretrained":
            return self.method or "pretrained"
        return self.kind if self.method is None else f"{self.kind}:{self.method}"


def parse_encoder(text: str) -> EncoderSpec:
    """Bare `random` and `supervised` take the SLiM encoder's config (the method under evaluation)."""
    if text == "raw":
        return EncoderSpec("raw")
    if text in ANCHORS:
        return EncoderSpec(text, "slim")
    kind, sep, method = text.partition(":")
    if sep and kind in ANCHORS:
        if method not in ENCODERS:
            raise ValueError(
                f"encoder {text!r}: unknown method {method!r}; known: {', '.join(sorted(ENCODERS))}"
            )
        return EncoderSpec(kind, method)
    path = Path(text)
    if not path.is_file():
        raise ValueError(
            f"encoder {text!r}: no such file; give a pretrained encoder.pt, `raw`, "
            f"`random:<method>` or `supervised:<method>` (methods: {', '.join(sorted(ENCODERS))})"
        )
    state = load_checkpoint(path)
    return EncoderSpec("pretrained", state.get("method"), path, state.get("layout"))


def check_combination(protocol: str, spec: EncoderSpec) -> None:
    """Anchors only where they mean something: a random or raw feature is never fine-tuned (that
    is the supervised anchor), and the supervised anchor is a fine-tuning figure."""
    if spec.kind in ("raw", "random") and protocol not in FROZEN_PROTOCOLS:
        raise ValueError(
            f"encoder {spec.name!r} is a frozen-feature anchor ({', '.join(FROZEN_PROTOCOLS)}); "
            f"fine-tuning from random init is `supervised:<method>`"
        )
    if spec.kind == "supervised" and protocol not in FINETUNE_PROTOCOLS:
        raise ValueError(
            f"encoder {spec.name!r} is trained from scratch: it goes with {', '.join(FINETUNE_PROTOCOLS)}, "
            f"not {protocol!r}"
        )


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Part:
    """One side of a split: sample ids, stored `(T, M, J, 3)` joints and labels, in id order."""

    ids: tuple[str, ...]
    joints: tuple[np.ndarray, ...]
    labels: torch.Tensor

    def subset(self, ids: list[str]) -> Part:
        index = {sample_id: i for i, sample_id in enumerate(self.ids)}
        rows = [index[i] for i in ids]
        return Part(tuple(ids), tuple(self.joints[r] for r in rows), self.labels[rows])


@dataclass(frozen=True)
class EvalData:
    split: str
    dataset: str
    layout: Layout
    class_names: tuple[str, ...]
    train: Part
    test: Part


def class_names(data_path: Path) -> tuple[str, ...]:
    """Action name of every label of the whole dataset (not only the split's), by label."""
    table = pq.read_table(data_path, columns=["label", "action"]).to_pylist()
    names = {row["label"]: row["action"] for row in table}
    return tuple(names.get(label, f"class {label}") for label in range(max(names) + 1))


def load_eval_data(split_path: Path, data_path: Path) -> EvalData:
    split = read_split(split_path)
    wanted = split["train"] + split["test"]
    sequences = {s.sample_id: s for s in read_sequences(data_path, wanted)}
    missing = sorted(set(wanted) - set(sequences))
    if missing:
        raise ValueError(
            f"{data_path}: {len(missing)} ids of {split_path} are not in the dataset, e.g. {missing[:3]}"
        )
    layouts = {s.layout for s in sequences.values()}
    if len(layouts) != 1:
        raise ValueError(f"{data_path}: the split's samples mix layouts {sorted(layouts)}")

    def part(ids: list[str]) -> Part:
        chosen = [sequences[i] for i in ids]
        labels = torch.tensor([s.label for s in chosen], dtype=torch.long)
        return Part(tuple(ids), tuple(s.joints for s in chosen), labels)

    return EvalData(
        split["protocol"],
        split["dataset"],
        get_layout(layouts.pop()),
        class_names(data_path),
        part(split["train"]),
        part(split["test"]),
    )


def clip_tensor(part: Part, layout: Layout, frames: int, normalise_view: bool) -> torch.Tensor:
    """The test-time input of every sample, `(N, 2, 3, frames, J)`: both persons, absent ones zero,
    view-normalised when the encoder expects it (`encoder.normalise_view`)."""
    clips = []
    for sample_id, joints in zip(part.ids, part.joints, strict=True):
        try:
            clips.append(eval_clip(prepare_clip(joints, layout, normalise=normalise_view), frames))
        except ValueError as exc:
            raise ValueError(f"sample {sample_id}: {exc}") from exc
    return torch.from_numpy(np.stack(clips))


# ----------------------------------------------------------------------------- encoders


def pretrained_encoder(spec: EncoderSpec, layout: Layout) -> nn.Module:
    """Load the encoder; its layout must be the data's (transfer keeps the skeleton)."""
    if spec.layout != layout.name:
        raise ValueError(
            f"{spec.path}: the encoder was pretrained on layout {spec.layout!r} but the data has layout "
            f"{layout.name!r} ({layout.num_joints} joints); evaluate it on a dataset with its layout"
        )
    return load_encoder(spec.path)


def anchor_encoder(method: str, layout: Layout, params_path: Path, seed: int) -> nn.Module:
    """A random-init encoder with the config (and clip preparation) of `method` in the active
    pretrain profile."""
    profile = load_profile(params_path, "pretrain", None)[1]
    config = model_config(method, getattr(profile, method).model, layout.num_joints, profile.normalise_view)
    encoder_config = config.encoder if method == "slim" else config
    fields = {k: v for k, v in asdict(encoder_config).items() if k != "num_joints"}
    with torch.random.fork_rng(devices=[]):  # the init draws from the global RNG: seed it, then restore
        torch.manual_seed(seed)
        return build(method, layout, **fields)


# ----------------------------------------------------------------------------- protocols


@dataclass
class Outcome:
    top1: float
    top5: float | None
    predictions: np.ndarray
    test_features: torch.Tensor  # for the embedding figure
    num_train: int
    details: dict


def frozen_features(
    encoder: nn.Module | None, data: EvalData, batch_size: int, progress: bool, raw_normalise_view: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test features: the raw-joints anchor's (prepared as `raw_normalise_view` says) when
    `encoder` is None."""
    if encoder is None:
        return tuple(
            raw_joint_features(part.joints, data.layout, normalise_view=raw_normalise_view)
            for part in (data.train, data.test)
        )
    device = next(encoder.parameters()).device

    def features(part: Part) -> torch.Tensor:
        clips = clip_tensor(part, data.layout, encoder.num_frames, encoder.normalise_view)
        return extract_features(encoder, clips, batch_size, device, progress)

    return features(data.train), features(data.test)


def run_linear(train_f, test_f, data: EvalData, profile: EvaluateProfile, device) -> Outcome:
    cfg = LinearProbeConfig(**{**profile.linear, "seed": profile.seed})
    num_classes = len(data.class_names)
    result = linear_probe(train_f, data.train.labels, test_f, data.test.labels, num_classes, cfg, device)
    details = {"config": asdict(cfg), "final_train_loss": result.loss_history[-1]}
    return Outcome(result.top1, result.top5, result.predictions, test_f, len(data.train.ids), details)


def run_knn(train_f, test_f, data: EvalData, profile: EvaluateProfile) -> Outcome:
    """Every k of the profile; the first is the headline (top1/top5, confusion, per class)."""
    ks, num_classes = tuple(profile.knn_ks), len(data.class_names)
    args = (train_f, data.train.labels, test_f)
    by_k = knn_evaluate(*args, data.test.labels, num_classes, ks, profile.knn_temperature)
    headline = ks[0]
    scores = knn_scores(*args, num_classes, (headline,), profile.knn_temperature)[headline]
    details = {
        "knn_k": headline,
        "knn_temperature": profile.knn_temperature,
        "knn": {f"k{k}": v for k, v in by_k.items()},
    }
    top = by_k[headline]
    return Outcome(
        top["top1"], top.get("top5"), scores.numpy().argmax(1), test_f, len(data.train.ids), details
    )


def finetune_settings(protocol: str, profile: EvaluateProfile) -> tuple[float, FinetuneConfig]:
    """The protocol's share of the training labels and its fine-tuning config."""
    cfg = FinetuneConfig(**{**profile.finetune, "seed": profile.seed})
    if protocol == "finetune":
        return 1.0, cfg
    semi = getattr(profile, protocol)
    return semi.fraction, replace(cfg, epochs=semi.epochs)


def run_finetune(
    protocol: str, encoder: nn.Module, data: EvalData, profile: EvaluateProfile, device, progress: bool
) -> Outcome:
    """Fine-tune `encoder` (in place) with a new head on the protocol's share of the training labels."""
    fraction, cfg = finetune_settings(protocol, profile)
    train = data.train
    if fraction < 1.0:
        train = train.subset(class_balanced_subset(train.ids, train.labels.tolist(), fraction, profile.seed))
    test_clips = clip_tensor(data.test, data.layout, encoder.num_frames, encoder.normalise_view)
    model, result = finetune(
        encoder,
        clip_tensor(train, data.layout, encoder.num_frames, encoder.normalise_view),
        train.labels,
        test_clips,
        data.test.labels,
        len(data.class_names),
        cfg,
        device,
    )
    test_f = extract_features(model.encoder, test_clips, profile.batch_size, device, progress)
    details = {"label_fraction": fraction, "config": asdict(cfg), "final_train_loss": result.loss_history[-1]}
    return Outcome(result.top1, result.top5, result.predictions, test_f, len(train.ids), details)


def eval_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def encoder_for(spec: EncoderSpec, data: EvalData, params_path: Path, seed: int) -> nn.Module | None:
    """The encoder `spec` names, on the evaluation device; None for the raw-joints anchor."""
    if spec.kind == "raw":
        return None
    if spec.kind == "pretrained":
        return pretrained_encoder(spec, data.layout).to(eval_device())
    return anchor_encoder(spec.method, data.layout, params_path, seed).to(eval_device())


def split_features(
    spec: EncoderSpec, data: EvalData, profile: EvaluateProfile, params_path: Path, progress: bool
) -> SplitFeatures:
    """The frozen features of both sides of the split (what `slim features` writes)."""
    encoder = encoder_for(spec, data, params_path, profile.seed)
    # the raw anchor is prepared as the pretrain profile's encoders are; an encoder carries its own
    raw_normalise = spec.kind != "raw" or load_profile(params_path, "pretrain", None)[1].normalise_view
    train, test = frozen_features(encoder, data, profile.batch_size, progress, raw_normalise)
    return SplitFeatures(spec.name, data.split, data.layout.name, data.train.ids, train, data.test.ids, test)


def check_features_match(features: SplitFeatures, data: EvalData, path: Path) -> None:
    """Features computed on another split, dataset or skeleton must not be scored against this one."""
    for side in ("train", "test"):
        if getattr(features, f"{side}_ids") != getattr(data, side).ids:
            raise ValueError(
                f"{path}: its {side} samples are not those of split {data.split!r}; recompute it with "
                f"`slim features` on this split"
            )
    if features.layout != data.layout.name:
        raise ValueError(
            f"{path}: features of layout {features.layout!r}, data of layout {data.layout.name!r}"
        )


def evaluate_frozen(
    protocol: str, features: SplitFeatures, data: EvalData, profile: EvaluateProfile
) -> Outcome:
    if protocol == "linear":
        return run_linear(features.train, features.test, data, profile, eval_device())
    return run_knn(features.train, features.test, data, profile)


# ----------------------------------------------------------------------------- outputs


def embed_2d(features: torch.Tensor, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """t-SNE of the features (PCA where scikit-learn is not installed): points, their labels, the name.

    At most EMBED_MAX samples (a seeded draw) and 500 iterations: t-SNE's cost grows with both, and
    a figure needs neither more. One OpenMP thread: scikit-learn's OpenMP runtime is not torch's,
    and with both spinning on the cores t-SNE ran 100x slower here (20 s instead of 0.1 s).
    """
    x = features.numpy()
    if len(x) > EMBED_MAX:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), EMBED_MAX, replace=False))
        x, labels = x[keep], labels[keep]
    try:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits
    except ImportError:
        return pca_2d(x), labels, "PCA"
    perplexity = min(30.0, (len(x) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
    with threadpool_limits(1, user_api="openmp"):
        return tsne.fit_transform(x).astype(np.float32), labels, "t-SNE"


def per_class_rows(data: EvalData, predictions: np.ndarray) -> list[dict]:
    labels = data.test.labels.numpy()
    num_classes = len(data.class_names)
    accuracy = per_class_accuracy(labels, predictions, num_classes)
    support = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[labels == predictions], minlength=num_classes)
    return [
        {
            "label": c,
            "action": data.class_names[c],
            "support": int(support[c]),
            "correct": int(correct[c]),
            "accuracy": None if np.isnan(accuracy[c]) else float(accuracy[c]),
        }
        for c in range(num_classes)
    ]


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_reports(
    out_dir: Path, name: str, rows: list[dict], outcome: Outcome, data: EvalData, seed: int
) -> None:
    """per_class.csv, predictions.csv (for `dvc plots`' confusion template) and the two PNGs."""
    names, labels = data.class_names, data.test.labels.numpy()
    title = f"{name} on {data.split}: top-1 {outcome.top1:.1%}"
    write_csv(out_dir / "per_class.csv", rows)
    write_csv(
        out_dir / "predictions.csv",
        [
            {"sample_id": i, "actual": names[t], "predicted": names[p]}
            for i, t, p in zip(data.test.ids, labels, outcome.predictions, strict=True)
        ],
    )
    cm = confusion_matrix(labels, outcome.predictions, len(names))
    plot_confusion_matrix(cm, names, out_dir / "confusion.png", title=title)
    points, point_labels, how = embed_2d(outcome.test_features, labels, seed)
    plot_embedding(
        points, point_labels, names, out_dir / "embedding.png", title=f"{title} ({how} of test features)",
        axis_labels=(f"{how} 1", f"{how} 2"),
    )  # fmt: skip


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch threads (0: leave the default), then restore the old count."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(
    protocol: str,
    encoder: str | None,
    split_path: Path,
    data_path: Path,
    out_dir: Path,
    *,
    features: Path | None = None,
    profile: str | None = None,
    params_path: Path = DEFAULT_PARAMS,
    progress: bool = False,
) -> dict:
    """Evaluate `encoder` (see `parse_encoder`) under `protocol`, or, for a frozen protocol, the
    features file `features` written by `slim features`; return the metrics (also written). Tracked
    as MLflow run `evaluate@<protocol>-<encoder>`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if (encoder is None) == (features is None):
        raise ValueError(
            "give either an encoder or a features file (from `slim features`), not both or neither"
        )
    if features is not None and protocol not in FROZEN_PROTOCOLS:
        raise ValueError(
            f"a features file serves the frozen protocols ({', '.join(FROZEN_PROTOCOLS)}); "
            f"{protocol!r} fine-tunes the encoder: give --encoder"
        )
    source: EncoderSpec | SplitFeatures = (
        parse_encoder(encoder) if features is None else load_features(features)
    )
    if isinstance(source, EncoderSpec):
        check_combination(protocol, source)
    profile_name, settings = load_profile(params_path, "evaluate", profile)
    data = load_eval_data(split_path, data_path)
    if isinstance(source, SplitFeatures):
        check_features_match(source, data, features)
    label = (source.name if isinstance(source, EncoderSpec) else source.encoder).partition(":")[0]
    settings_params = settings.model_dump(mode="json")
    with tracking.stage_run(
        f"evaluate@{protocol}-{label}",
        dataset=data.dataset,
        params={"protocol": protocol, "encoder": label, "profile": profile_name, **settings_params},
        data_path=data_path,
        params_path=params_path,
    ):
        start = time.perf_counter()
        with torch_threads(settings.threads):
            outcome, name = _evaluate(protocol, source, data, settings, params_path, progress)
        rows = per_class_rows(data, outcome.predictions)
        write_reports(Path(out_dir), f"{name} / {protocol}", rows, outcome, data, settings.seed)
        metrics = {
            "protocol": protocol,
            "encoder": name,
            "encoder_source": encoder if encoder is not None else str(features),
            "split": data.split,
            "layout": data.layout.name,
            "profile": profile_name,
            "seed": settings.seed,
            "top1": outcome.top1,
            "top5": outcome.top5,
            **outcome.details,
            "num_classes": len(data.class_names),
            "num_train": outcome.num_train,
            "num_test": len(data.test.ids),
            "per_class": {row["action"]: row["accuracy"] for row in rows},
            "wall_time_s": round(time.perf_counter() - start, 2),
        }
        atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        tracking.log_evaluation(protocol, label, Path(out_dir))
    return metrics


def _evaluate(
    protocol: str,
    source: EncoderSpec | SplitFeatures,
    data: EvalData,
    settings: EvaluateProfile,
    params_path: Path,
    progress: bool,
) -> tuple[Outcome, str]:
    """The protocol's outcome and the encoder's report name."""
    if protocol in FINETUNE_PROTOCOLS:
        model = encoder_for(source, data, params_path, settings.seed)
        return run_finetune(protocol, model, data, settings, eval_device(), progress), source.name
    if isinstance(source, EncoderSpec):
        source = split_features(source, data, settings, params_path, progress)
    return evaluate_frozen(protocol, source, data, settings), source.encoder
