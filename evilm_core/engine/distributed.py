"""torchrun / SLURM process-group set-up (docs/design.md, "Scale"): NCCL on GPU, gloo on CPU; rank 0 writes.
Also the one collective a loss needs: the contrastive terms over the global batch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from evilm_core.models.losses import contrastive_loss, contrastive_rows, same_key


@dataclass
class DistInfo:
    rank: int = 0  # global rank
    world: int = 1  # number of processes
    local_rank: int = 0  # rank on this node (selects the GPU)
    device: torch.device = torch.device("cpu")  # this process's device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def this_local_rank() -> int:
    """This process's rank on its node (selects its GPU), under torchrun or SLURM."""
    _slurm_to_torchrun_env()
    return int(os.environ.get("LOCAL_RANK", "0"))


def _slurm_to_torchrun_env() -> None:
    """Under `srun` without torchrun, map SLURM's variables onto torchrun's."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_PORT", "29500")


def init_distributed(device_name: str = "cpu") -> DistInfo:
    """Join the process group torchrun (or SLURM) describes, on the resolved device `device_name`
    (settings.resolve_settings); a plain single process otherwise."""
    _slurm_to_torchrun_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device_name)
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


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All ranks' rows of x [B_r, ...] concatenated in rank order [sum B_r, ...]; the backward
    returns each rank the gradient of its own rows (summed over every rank's loss). Rows are
    padded to the largest B_r for the collective (a skipped clip makes a batch smaller)."""
    from torch.distributed._functional_collectives import all_gather_tensor_autograd

    width = max(sizes)
    pad = width - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    gathered = all_gather_tensor_autograd(padded.contiguous(), 0, dist.group.WORLD)  # [world * width, ...]
    return torch.cat([gathered[r * width:r * width + n] for r, n in enumerate(sizes)])


def global_contrastive_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                            keys: list[str]) -> torch.Tensor:
    """The contrastive loss over the global batch, CLIP style: this rank's rows (video, text
    [B, E], `keys` saying which rows share a video or caption) against every rank's columns.
    Weighted by B * world / N, so that DDP's mean over ranks of these losses, and of their
    gradients, is exactly the single-process loss on the concatenated batch, whatever the
    rows per rank. One process, or no gradient (validation runs on rank 0 alone, and a
    collective there would wait forever for the others): the local batch, as it always was."""
    world = _world()
    if world == 1 or not torch.is_grad_enabled():
        return contrastive_loss(video, text, logit_scale, same_key(keys, video.device))
    sizes: list = [None] * world
    dist.all_gather_object(sizes, len(keys))
    all_keys: list = [None] * world
    dist.all_gather_object(all_keys, list(keys))
    flat = [k for part in all_keys for k in part]
    start, n = sum(sizes[:dist.get_rank()]), len(flat)
    positives = same_key(flat, video.device)[start:start + len(keys)]  # [B, N]
    loss = contrastive_rows(video, text, gather_with_grad(video, sizes), gather_with_grad(text, sizes), logit_scale,
                            positives)
    return loss * (len(keys) * world / n)
