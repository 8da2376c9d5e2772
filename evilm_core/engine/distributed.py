"""torchrun / SLURM process-group set-up (docs/design.md, "Scale"): NCCL on GPU, gloo on CPU; rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from evilm_core.engine.runtime import choose_device


@dataclass
class DistInfo:
    rank: int = 0  # global rank
    world: int = 1  # number of processes
    local_rank: int = 0  # rank on this node (selects the GPU)
    device: torch.device = torch.device("cpu")  # this process's device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_to_torchrun_env() -> None:
    """Under `srun` without torchrun, map SLURM's variables onto torchrun's."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_PORT", "29500")


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun (or SLURM) describes; a plain single process otherwise."""
    _slurm_to_torchrun_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
