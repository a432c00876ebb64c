"""torch.distributed set-up for commands launched by `torchrun` (or run as one plain process).

`torchrun --nproc-per-node N sendvae ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without them the
same command is a single process. NCCL on CUDA, gloo on CPU. Only rank 0 prints and writes
shared files; when a command fails or stops, `sendvae_cli.outcome` decides which process says so.

Under torchrun a process is also stopped cleanly by SIGTERM / SIGINT outside the loops that poll
for them (`stopping.stop_on_signals`): the signal raises `Interrupted` there, so that every
process ends with a line a person can read, not with the signal's default death.

`main_first(dist, prepare)` is how a folder is set up: rank 0 creates or checks it while the others
wait, and only then do they look at it (looking earlier, they would see it half made); a
`UserError` of rank 0's is raised on every rank, so none is left waiting.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from sendvae_cli.errors import UserError
from sendvae_cli.ranks import launch

T = TypeVar("T")


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
            raise UserError(f"--device {requested}: CUDA is not available on this machine")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast when asked, or by default on CUDA; nothing on CPU by default."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def init(requested_device: str | None = None) -> Dist:
    place = launch()
    rank, world, local_rank = place.rank, place.world, place.local_rank
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Long timeout: ranks wait at barriers while rank 0 merges a large cache.
        dist.init_process_group(backend, timeout=timedelta(hours=6))
        from sendvae_cli import outcome
        from sendvae_cli.stopping import stop_outside_loops

        outcome.register_process()
        stop_outside_loops()
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def main_first(dist_: Dist, prepare: Callable[[], T]) -> T | None:
    """`prepare()` on rank 0 while the others wait; its UserError is raised on every rank.

    Returns what rank 0's `prepare` returned (None on the other ranks). The others go on only
    once rank 0 is done, so whatever it wrote is complete when they read it.
    """
    if dist_.world == 1:
        return prepare()
    result, failure = None, None
    if dist_.is_main:
        try:
            result = prepare()
        except UserError as error:
            failure = error
    box = [None if failure is None else str(failure)]
    dist.broadcast_object_list(box, src=0)  # NCCL: on the current device, which init set
    if failure is not None:
        raise failure
    if box[0] is not None:
        raise UserError(box[0])
    return result


def share(dist_: Dist, value: T) -> T:
    """Rank 0's `value` on every rank (a small picklable object)."""
    if dist_.world == 1:
        return value
    box = [value if dist_.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(dist_: Dist, rows: torch.Tensor | None, like: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `rows` (N_r x ...; None: none this round), in rank order, on every rank.

    The pieces may differ in length (the last round of a pass); they travel padded to the
    longest, in `like`'s dtype, trailing shape and device. Values arrive bit for bit.
    """
    if dist_.world == 1:
        return [] if rows is None else [rows]
    rows = like.new_zeros((0, *like.shape[1:])) if rows is None else rows
    counts = torch.tensor([len(rows)], device=like.device)
    all_counts = [torch.zeros_like(counts) for _ in range(dist_.world)]
    dist.all_gather(all_counts, counts)
    longest = max(int(c) for c in all_counts)
    padded = like.new_zeros((longest, *like.shape[1:]))
    padded[: len(rows)] = rows
    pieces = [torch.zeros_like(padded) for _ in range(dist_.world)]
    dist.all_gather(pieces, padded)
    return [piece[: int(c)] for piece, c in zip(pieces, all_counts) if int(c)]


def finish() -> None:
    """The command is done on this process: wait for the others, then leave the group.

    Ranks that end early (the others while rank 0 computes figures or trains probes) wait here:
    a process that exits while another still holds the group can abort on its way out (gloo:
    "terminate called without an active exception"), and a job ends when its last process does.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
        dist.destroy_process_group()


def shutdown() -> None:
    """Leave the process group (sample's pipeline calls this when it ends, also on errors)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
