"""torch.distributed helpers: join the process group `torchrun` describes, or run as one process.

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_from_env` reads them
(env:// rendezvous) and picks the backend from the device: nccl for CUDA, gloo for CPU. Without them
(a plain `python` run) nothing is initialised and every helper here is a no-op for rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: global rank, world size, rank on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """The rank, world size and local rank that torchrun put in the environment (0, 1, 0 without it)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group described by the environment when WORLD_SIZE > 1; return this rank's info.

    On CUDA the current device is set to LOCAL_RANK first, so that nccl and every `.cuda()` use it.
    """
    info = env_info()
    if info.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend_for(device), init_method="env://")
    return info


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over ranks (a copy; `x` itself unchanged when running as one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return x.clone()
    out = x.clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def all_gather_object(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (`[obj]` when running as one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
