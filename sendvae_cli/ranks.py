"""Which process this is: the one place the launcher's environment is read (torch-free).

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK (and TORCHELASTIC_RUN_ID, the rendezvous
address); without them a command is one process, rank 0 of 1. `distributed.Dist` is built from
`launch()` once torch is up; the light paths (`sendvae --help`, printing warnings, choosing who
reports an error) ask here without importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    # Names this torchrun launch on this machine, or None when not under torchrun (see `launch`).
    token: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch() -> Launch:
    """This process's place in the job, read from the environment now.

    The token: the local processes of one launch are children of the same torchrun agent, so its
    process id (with the run id and rendezvous address) tells this launch from an earlier one.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    token = None
    if world > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        parts = [os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")]
        token = "|".join(parts + [str(os.getppid())])
    return Launch(rank=int(os.environ.get("RANK", "0")), world=world,
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")), token=token)


def is_main() -> bool:
    """Rank 0 (or a single process): the one that prints warnings."""
    return launch().is_main
