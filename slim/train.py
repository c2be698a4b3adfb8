"""The pretraining loop for SLiM and the MAE baseline: CPU or CUDA, one process or DDP under torchrun.

One optimiser step: schedule values for the step (lr, weight decay, teacher momentum and temperature
from `slim.schedules`, indexed by step) -> forward under autocast (CUDA only; CPU runs full fp32) ->
backward (through a GradScaler for fp16) -> clip the gradient norm -> AdamW step -> for SLiM, the EMA
teacher update, identical on every rank because the gradients were all-reduced first.

Exact resumption: a batch depends only on (seed, step, rank) (`slim.data.dataset`), the model's own
draws come from a generator seeded the same way, and a checkpoint holds the model (student and
teacher), optimiser, scaler, RNG states and the next step. On CPU, with deterministic algorithms on,
a run resumed from any checkpoint ends with the same bits as the uninterrupted run.

Outputs in `out_dir`: `checkpoints/step-XXXXXXXX.pt` (the last K), `plots.csv` (one row per step),
`metrics.json`, and `encoder.pt` (the student encoder, `slim.export`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import sys
import time
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from slim.atomic import atomic_path, atomic_write_text
from slim.checkpoint import (
    CHECKPOINT_PATTERN,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from slim.data.dataset import MODEL_STREAM, BatchPlan, StepBatches, TrainingClips, step_loader, step_seed
from slim.distributed import DistInfo, all_gather_object, all_reduce_mean, barrier, cleanup, init_from_env
from slim.encoder import configure_param_groups
from slim.export import save_encoder
from slim.mae import MAE, MAEConfig
from slim.monitor import MONITOR_KEYS, CollapseMonitor
from slim.schedules import Schedules, scaled_lr
from slim.ssl import SLiM, SLiMConfig
from slim.views import ViewConfig

METHODS = ("slim", "mae")
LOSS_KEYS = {"slim": ("loss", "dino", "ibot", "koleo", *MONITOR_KEYS), "mae": ("loss",)}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Settings a resumed run may change: they do not touch the trajectory.
RESUME_FREE = frozenset({"num_workers", "checkpoint_every", "keep_checkpoints"})


@dataclass
class TrainConfig:
    """One pretraining run. `model` and `views` are plain-dict overrides of `SLiMConfig`/`MAEConfig`
    and `ViewConfig` fields (nested dicts for nested configs; `num_joints` comes from the data)."""

    method: str
    steps: int
    batch_size: int  # global: split over the DDP processes
    seed: int = 0
    lr: float = 2e-4  # peak lr at batch 1024; the run uses lr * sqrt(batch_size / 1024)
    final_lr: float = 1e-6
    weight_decay: tuple[float, float] = (0.04, 0.2)
    momentum: tuple[float, float] = (0.994, 1.0)
    teacher_temp: tuple[float, float] = (0.04, 0.07)
    teacher_temp_warmup: float = 0.2  # fraction of the steps over which teacher_temp warms up (paper: 30/150)
    freeze_last_layer_steps: int = 0
    clip_grad: float = 3.0
    precision: str = "fp32"  # fp32 | bf16 | fp16; CUDA only, CPU always runs fp32
    threads: int = 0  # torch intra-op threads of each process; 0 = torch's default (one per core)
    num_workers: int = 0
    normalise_view: bool = True  # clips rotated to the canonical view (slim.data.transforms.normalise_view)
    pad_frames: int = 0  # ping-pong pad shorter training clips to this length; 0 = never (the paper: 150)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    model: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown pretraining method {self.method!r}; known: {', '.join(METHODS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if min(self.steps, self.batch_size, self.checkpoint_every, self.keep_checkpoints) < 1:
            raise ValueError("steps, batch_size, checkpoint_every and keep_checkpoints must be >= 1")
        if self.threads < 0 or self.num_workers < 0:
            raise ValueError("threads and num_workers must be >= 0")


# ----------------------------------------------------------------------------- configs and model

_SCALAR_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def config_from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a plain mapping, recursing into dataclass fields; lists become tuples.

    Unknown keys and values of the wrong scalar type raise ValueError naming `where` and the key.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if is_dataclass(hint):
            value = config_from_dict(hint, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        elif hint in _SCALAR_TYPES and (
            not isinstance(value, _SCALAR_TYPES[hint]) or (hint is not bool and isinstance(value, bool))
        ):
            raise ValueError(f"{where}.{name}: expected {hint.__name__}, got {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def model_config(
    method: str, overrides: Mapping[str, Any], num_joints: int, normalise_view: bool = True
) -> SLiMConfig | MAEConfig:
    """The pretraining model's config: defaults (the paper's), `overrides`, the layout's joints and
    the run's clip preparation (`TrainConfig.normalise_view`, recorded in the encoder's config)."""
    encoder = overrides.get("encoder", {}) if method == "slim" else overrides
    if not isinstance(encoder, Mapping) or {"num_joints", "normalise_view"} & set(encoder):
        raise ValueError(
            "model: num_joints comes from the dataset's layout and normalise_view from the profile; "
            "give the other encoder fields as a mapping"
        )
    fixed = {"num_joints": num_joints, "normalise_view": normalise_view}
    if method == "slim":
        return config_from_dict(SLiMConfig, {**overrides, "encoder": {**encoder, **fixed}}, "model")
    return config_from_dict(MAEConfig, {**overrides, **fixed}, "model")


def build_model(config: SLiMConfig | MAEConfig) -> SLiM | MAE:
    return SLiM(config) if isinstance(config, SLiMConfig) else MAE(config)


def student_encoder(model: SLiM | MAE) -> nn.Module:
    return model.student_encoder if isinstance(model, SLiM) else model.encoder


def param_groups(model: SLiM | MAE, weight_decay: float) -> list[dict]:
    """AdamW groups carrying the `wd_multiplier` that `StepValues.apply_to` reads."""
    if isinstance(model, SLiM):
        return model.param_groups(weight_decay)
    # configure_param_groups sets weight_decay to its argument or 0: with 1.0 that is the multiplier
    return [{**g, "wd_multiplier": g["weight_decay"]} for g in configure_param_groups(model, 1.0)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def state_digest(module: nn.Module) -> str:
    """sha256 over the bytes of every tensor of the state dict, in order: equal iff bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- one step


def train_step(
    model: nn.Module,
    core: SLiM | MAE,
    inputs: Any,
    teacher_temp: float,
    momentum: float,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip_grad: float,
    amp_dtype: torch.dtype | None,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Forward, backward, clip, step, teacher update; `model` is `core` or its DDP wrapper.

    The optimiser's lr and weight decay must already be set for this step.
    """
    device_type = next(core.parameters()).device.type
    autocast = (
        torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        out = model(inputs, teacher_temp) if isinstance(core, SLiM) else model(inputs, generator)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for g in optimizer.param_groups for p in g["params"]], clip_grad
    )
    scaler.step(optimizer)
    scaler.update()
    if isinstance(core, SLiM):
        core.update_teacher(momentum)
    keys = LOSS_KEYS["slim" if isinstance(core, SLiM) else "mae"]
    return {k: out[k].detach().float() for k in keys} | {"grad_norm": grad_norm.detach().float()}


# ----------------------------------------------------------------------------- outputs


class PlotsFile:
    """`plots.csv`: one row per step, appended and flushed as training goes (DVC plots read it).

    On resume the rows of steps at or after the resume step (written after the last checkpoint by the
    run that died) are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, path: Path, columns: list[str], start_step: int) -> None:
        self.path, self.columns = path, columns
        rows = []
        if start_step > 0 and path.is_file():
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames == columns:
                    rows = [r for r in reader if int(r["step"]) < start_step]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)
        self._handle = path.open("a", newline="")
        self._writer = csv.DictWriter(self._handle, columns)

    def write(self, row: dict[str, float]) -> None:
        self._writer.writerow({k: row[k] for k in self.columns})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _clear_checkpoints(directory: Path) -> None:
    if directory.is_dir():
        for path in directory.iterdir():
            if CHECKPOINT_PATTERN.match(path.name):
                path.unlink()


def _trajectory(config: TrainConfig, world_size: int) -> dict:
    """What must match for a resumed run to continue the same trajectory (JSON-normalised)."""
    settings = {k: v for k, v in asdict(config).items() if k not in RESUME_FREE}
    return json.loads(json.dumps({**settings, "world_size": world_size}))


def _amp_dtype(precision: str, device: torch.device, announce: bool) -> torch.dtype | None:
    dtype = PRECISIONS[precision]
    if dtype is not None and device.type != "cuda":
        if announce:
            print(f"note: precision {precision} applies on CUDA only; this CPU run uses fp32", file=sys.stderr)
        return None
    return dtype


# ----------------------------------------------------------------------------- the run


def pretrain(
    config: TrainConfig,
    data: TrainingClips,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict:
    """Pretrain on `data`, writing checkpoints, plots.csv, metrics.json and encoder.pt into `out_dir`.

    Under torchrun every rank calls this; the process group is joined (and left) here. Without
    `resume`, earlier checkpoints in `out_dir` are deleted and training starts at step 0; with it,
    training continues from the newest checkpoint (or starts, if there is none). Returns the metrics.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    owns_group = not torch.distributed.is_initialized()
    info = init_from_env(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank if device.index is None else device.index)
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, data, Path(out_dir), resume, progress, device, info)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
        if owns_group:
            cleanup()


def _run(
    config: TrainConfig,
    data: TrainingClips,
    out_dir: Path,
    resume: bool,
    progress: bool,
    device: torch.device,
    info: DistInfo,
) -> dict:
    method = config.method
    amp_dtype = _amp_dtype(config.precision, device, info.is_main)
    cfg = model_config(method, config.model, data.layout.num_joints, config.normalise_view)
    views = config_from_dict(ViewConfig, config.views, "views") if method == "slim" else None
    torch.manual_seed(config.seed)
    core = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(param_groups(core, config.weight_decay[0]), lr=0.0)
    schedules = Schedules.build(
        config.steps,
        lr=scaled_lr(config.lr, config.batch_size),
        final_lr=config.final_lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        teacher_temp=config.teacher_temp,
        teacher_temp_warmup_steps=round(config.teacher_temp_warmup * config.steps),
        freeze_last_layer_steps=config.freeze_last_layer_steps,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    ckpt_dir = out_dir / "checkpoints"
    trajectory = _trajectory(config, info.world_size)
    start_step, elapsed, last = 0, 0.0, {}
    latest = latest_checkpoint(ckpt_dir) if resume else None
    if latest is not None:
        state = load_checkpoint(latest)
        if state["trajectory"] != trajectory:
            changed = sorted(k for k in trajectory if state["trajectory"].get(k) != trajectory[k])
            raise ValueError(f"{latest}: cannot resume, the run's settings changed: {', '.join(changed)}")
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        start_step, elapsed, last = state["step"], state["elapsed_s"], state["last"]
    elif info.is_main:
        _clear_checkpoints(ckpt_dir)
    barrier()  # every rank has read its checkpoint before rank 0 may write a newer one

    model = core
    if info.enabled:
        model = DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    plan = BatchPlan(len(data.clips), config.batch_size, info.world_size, config.seed)
    mae_frames = cfg.num_frames if method == "mae" else 0
    dataset = StepBatches(data, method, plan, info.rank, views, mae_frames, config.pad_frames)
    loader = step_loader(dataset, start_step, config.steps, config.num_workers, device.type == "cuda")

    columns = ["step", *LOSS_KEYS[method], "grad_norm", "lr", "weight_decay"]
    columns += ["momentum", "teacher_temp"] if method == "slim" else []
    columns += ["clips_per_s"]
    plots = PlotsFile(out_dir / "plots.csv", columns, start_step) if info.is_main else None
    bar = _progress_bar(progress and info.is_main, config.steps, start_step, method)
    monitor = CollapseMonitor(warmup=round(config.teacher_temp_warmup * config.steps))
    warnings: list[str] = []  # this process's (a resumed run warns afresh)

    def checkpoint(next_step: int, elapsed_s: float) -> None:
        state = {
            "step": next_step,
            "trajectory": trajectory,
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "loader": {"next_step": next_step, "seed": config.seed, "world_size": info.world_size},
            "elapsed_s": elapsed_s,
            "last": last,
        }
        save_checkpoint(ckpt_dir / checkpoint_name(next_step), state)
        prune_checkpoints(ckpt_dir, config.keep_checkpoints)

    core.train()
    started = tick = time.perf_counter()
    try:
        for batch in loader:
            step = batch.step
            values = schedules[step]
            values.apply_to(optimizer)
            generator = torch.Generator(device).manual_seed(step_seed(config.seed, step, MODEL_STREAM, info.rank))
            out = train_step(
                model,
                core,
                batch.to(device).inputs,
                values.teacher_temp,
                values.momentum,
                optimizer,
                scaler,
                config.clip_grad,
                amp_dtype,
                generator,
            )
            reduced = all_reduce_mean(torch.stack(list(out.values()))).tolist()
            last = dict(zip(out, reduced, strict=True))
            now = time.perf_counter()
            rate = config.batch_size / max(now - tick, 1e-9)
            tick = now
            if info.is_main:
                plots.write({"step": step, **last, **asdict(values), "clips_per_s": rate})
                postfix = {"loss": f"{last['loss']:.4f}", "clips_s": f"{rate:.1f}"}
                if method == "slim":
                    postfix["H_cls"] = f"{last['teacher_cls_entropy']:.2f}"
                    postfix["H_patch"] = f"{last['teacher_patch_entropy']:.2f}"
                bar.set_postfix(postfix, refresh=False)
                for warning in monitor.update(step, last):
                    warnings.append(warning)
                    bar.write(f"warning: {warning}", file=sys.stderr)
                bar.update()
                done = step + 1
                if done % config.checkpoint_every == 0 or done == config.steps:
                    checkpoint(done, elapsed + now - started)
                    if not progress:
                        line = f"{method} step {done}/{config.steps} loss {last['loss']:.4f} {rate:.1f} clips/s"
                        print(line, file=sys.stderr, flush=True)
    finally:
        bar.close()
        if plots is not None:
            plots.close()
    elapsed += time.perf_counter() - started if start_step < config.steps else 0.0
    digest = state_digest(core)
    digests = all_gather_object(digest)
    if len(set(digests)) != 1:  # DDP's invariant: identical gradients, hence identical weights
        raise RuntimeError(f"ranks ended with different weights (sha256 {digests})")

    metrics = {
        "method": method,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "world_size": info.world_size,
        "device": device.type,
        "precision": config.precision if amp_dtype is not None else "fp32",
        "final_loss": last.get("loss"),
        "final": last,
        "wall_time_s": elapsed,
        "clips_per_s": config.steps * config.batch_size / elapsed if elapsed > 0 else None,
        "params": count_parameters(core),
        "encoder_params": count_parameters(student_encoder(core)),
        "resumed_from_step": start_step if latest is not None else None,
        "collapse_warnings": warnings,
        "weights_sha256": digest,
    }
    if info.is_main:
        save_encoder(out_dir / "encoder.pt", method, data.layout.name, student_encoder(core))
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    barrier()
    return metrics


def _progress_bar(enabled: bool, total: int, initial: int, method: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"pretrain {method}", unit="step", disable=not enabled)
