"""Compute and wall-time accounting: FLOP counts, parameter counts, throughput, matmul peak.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add; matmuls,
convolutions and attention, not elementwise ops) with scaled-dot-product attention forced onto the
MATH backend: the fused CPU kernel is not registered with the counter and would count as zero.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory instead of returning it to the OS (process-wide).

    By default tensors above a dynamic threshold (at most 32 MB) are mmap'd and every free gives the
    pages back, so each forward pass page-faults its activations in again: about 1.1 GB of faults
    per batch-16 forward of the 750-token MAE encoder here. Returns False where malloc is not glibc's.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 1 << 30))


def count_flops_of(fn: Callable[[], object]) -> int:
    """FLOPs of everything `fn()` runs (forward, and backward if it calls it)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs of `model(*inputs)` for the whole batch, attention included."""
    with torch.no_grad():
        return count_flops_of(lambda: model(*inputs))


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def median_seconds(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_throughput(model: nn.Module, x: torch.Tensor, warmup: int = 3, repeats: int = 10) -> float:
    """Inference clips per second (median over repeats) of `model(x)`, batch = x.shape[0]."""
    with torch.inference_mode():
        return x.shape[0] / median_seconds(lambda: model(x), warmup, repeats)


def measure_matmul_gflops(size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """This machine's own dense matmul rate (GFLOP/s, median) for square `size` matrices."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    with torch.inference_mode():
        seconds = median_seconds(lambda: torch.mm(a, b, out=out), warmup=2, repeats=repeats)
    return 2 * size**3 / seconds / 1e9


def interleaved_median_seconds(
    fns: dict[str, Callable[[], object]], warmup: int = 3, repeats: int = 10
) -> dict:
    """Median wall time of each `fn()`, timing the functions in turn within every round, so that a
    change in machine load during the measurement affects all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------- the efficiency report


def _per_model(name: str, model: nn.Module, x: torch.Tensor, seconds: float, peak: float) -> dict:
    flops = count_flops(model, x) / x.shape[0]
    clips_per_s = x.shape[0] / seconds
    achieved = flops * clips_per_s / 1e9
    return {
        "clip_frames": model.num_frames,
        "tokens": model.num_frames // model.patch_size * model.num_joints,
        "params": count_params(model),
        "gflops_per_clip": flops / 1e9,
        "clips_per_s": clips_per_s,
        "ms_per_clip": 1e3 * seconds / x.shape[0],
        "achieved_gflops_per_s": achieved,
        "fraction_of_matmul_peak": achieved / peak,
    }


def inference_report(
    encoders: dict[str, nn.Module],
    batch: int,
    persons_present: float,
    warmup: int = 3,
    repeats: int = 10,
    compile: bool = False,
    matmul_size: int = 2048,
) -> dict:
    """GFLOPs, parameters and wall time of the "slim" and "mae" inference encoders on one-person
    clips (each at its own length), and their ratios under three person-counting protocols.

    The encoders and a square fp32 matmul (the machine's reference rate) are timed in turn within
    every round, so that the fractions of the matmul rate compare like with like under varying load.
    """
    gen = torch.Generator().manual_seed(0)
    inputs = {
        name: torch.randn(batch, 3, m.num_frames, m.num_joints, generator=gen) for name, m in encoders.items()
    }
    runners = {name: torch.compile(m) if compile else m for name, m in encoders.items()}
    a, b = torch.randn(2, matmul_size, matmul_size, generator=gen).unbind(0)
    out = torch.empty(matmul_size, matmul_size)
    fns = {name: (lambda r=r, x=inputs[name]: r(x)) for name, r in runners.items()}
    with torch.inference_mode():
        seconds = interleaved_median_seconds(
            {**fns, "matmul": lambda: torch.mm(a, b, out=out)}, warmup, repeats
        )
    peak = 2 * matmul_size**3 / seconds["matmul"] / 1e9
    models = {name: _per_model(name, m, inputs[name], seconds[name], peak) for name, m in encoders.items()}
    slim, mae = models["slim"], models["mae"]

    def ratios(slim_persons: float, mae_persons: float) -> dict:
        return {
            "slim_gflops_per_sample": slim["gflops_per_clip"] * slim_persons,
            "mae_gflops_per_sample": mae["gflops_per_clip"] * mae_persons,
            "flop_ratio_mae_over_slim": mae["gflops_per_clip"]
            * mae_persons
            / (slim["gflops_per_clip"] * slim_persons),
            "wall_time_ratio_mae_over_slim": mae["ms_per_clip"]
            * mae_persons
            / (slim["ms_per_clip"] * slim_persons),
        }

    return {
        "batch": batch,
        "compiled": compile,
        "matmul_gflops_per_s": peak,
        "models": models,
        "protocols": {
            "one_person_each": {"persons": "1 (SLiM) vs 1 (MAE), like for like", **ratios(1, 1)},
            "both_person_slots": {"persons": "2 (SLiM) vs 2 (MAE), every slot computed", **ratios(2, 2)},
            "published": {
                "persons": f"SLiM: persons present (mean {persons_present:g}) vs MAE: 2 slots always",
                **ratios(persons_present, 2),
            },
        },
    }


def _encoders_step(student: nn.Module, teacher: nn.Module, views) -> None:
    """The encoder work of a SLiM step: teacher on the unmasked globals, student on every (masked)
    view, backward through a stand-in loss; no heads, no losses, no optimiser."""
    with torch.no_grad():
        teacher.forward_features(views.global_views)
    feats = [student.forward_features(views.global_views, views.global_masks)]
    feats += [student.forward_features(x, views.local_masks[f]) for f, x in views.local_views.items()]
    sum(f["cls"].square().mean() + f["patch"].square().mean() for f in feats).backward()


def pretraining_step_report(layout, batch: int = 4, warmup: int = 1, repeats: int = 3) -> dict:
    """FLOPs and wall time per sample of one pretraining step (forward + backward, no optimiser
    step, views made beforehand) of SLiM and of the MAE baseline, paper configurations.

    SLiM (`slim.ssl.SLiM`, default `slim.views.ViewConfig`): student on 2 global 64-frame views and 8
    local views, teacher on the 2 globals; counted twice: with the CLS/patch heads and the losses,
    and with the encoders only. MAE: 90% masked 120-frame clip, encoder on the visible tokens,
    decoder on all. One person per sample for both.
    """
    from slim.encoder import EncoderConfig
    from slim.layouts import get_layout
    from slim.mae import MAE, MAEConfig
    from slim.ssl import SLiM, SLiMConfig
    from slim.views import ViewConfig, make_views

    layout = get_layout(layout) if isinstance(layout, str) else layout
    J = layout.num_joints
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    view_cfg = ViewConfig()
    slim = SLiM(SLiMConfig(encoder=EncoderConfig(num_joints=J)))
    mae = MAE(MAEConfig(num_joints=J))
    clips = torch.randn(batch, 3, 2 * view_cfg.global_frames, J, generator=gen).cumsum(2) * 0.01
    views = make_views(clips, torch.full((batch,), clips.shape[2]), layout, view_cfg, gen)
    x_mae = torch.randn(batch, 3, mae.cfg.num_frames, J, generator=gen).cumsum(2) * 0.01

    steps = {
        "slim_with_heads": lambda: slim(views, teacher_temp=0.04)["loss"].backward(),
        "slim_encoders_only": lambda: _encoders_step(slim.student["encoder"], slim.teacher["encoder"], views),
        "mae": lambda: mae(x_mae, torch.Generator().manual_seed(0))["loss"].backward(),
    }
    seconds = interleaved_median_seconds(steps, warmup, repeats)
    flops = {name: count_flops_of(step) for name, step in steps.items()}
    local = ", ".join(f"{x.shape[0] // batch} x {f}" for f, x in views.local_views.items())
    report = {
        "batch": batch,
        "slim_views": f"per sample {view_cfg.num_globals} x {view_cfg.global_frames} frames (student and "
        f"teacher) + {local} frames (student)",
        "slim_heads": f"slim_with_heads: CLS and patch DINO heads ({slim.cfg.num_prototypes} prototypes) "
        "and the DINO/iBOT/KoLeo losses included; slim_encoders_only: encoder work only",
        "mae_step": f"{mae.cfg.mask_ratio:g} random masking, encoder on visible tokens, "
        f"{mae.cfg.decoder_depth}-block decoder on all tokens, motion MSE",
        "optimiser_step": "excluded",
    }
    for name in steps:
        report[name] = {
            "gflops_per_sample": flops[name] / batch / 1e9,
            "ms_per_sample": 1e3 * seconds[name] / batch,
        }
    for name in ("slim_with_heads", "slim_encoders_only"):
        report[f"{name}_over_mae"] = {
            "flop_ratio": flops[name] / flops["mae"],
            "wall_time_ratio": seconds[name] / seconds["mae"],
        }
    return report
