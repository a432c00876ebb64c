"""torch.distributed set-up for commands launched by `torchrun` (or run as one plain process).

`torchrun --nproc-per-node N sendvae ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without them the
same command is a single process. NCCL on CUDA, gloo on CPU. Only rank 0 prints and writes
shared files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()


def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            from sendvae_cli.errors import UserError

            raise UserError(f"--device {requested}: CUDA is not available on this machine")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(requested_device: str | None = None) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Long timeout: ranks wait at barriers while rank 0 merges a large cache.
        dist.init_process_group(backend, timeout=timedelta(hours=6))
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)

