"""A deterministic, resumable stream of mini-batches, split across processes.

The stream is the concatenation of one seeded permutation per epoch. Optimizer step k consumes
global batch k: stream[k*G : (k+1)*G], G = micro_batch * world * accumulation. Micro-batch m of
rank r in that step is the slice starting at ((m * world) + r) * micro_batch. Resuming at step
k is therefore exact, and the global batch does not depend on how it is split.
"""

from __future__ import annotations

from typing import Iterator

import torch

from sendvae_cli.seeds import epoch_seed


class StreamBatchSampler(torch.utils.data.Sampler):
    def __init__(self, num_rows: int, micro_batch: int, world: int, rank: int, accumulation: int,
                 seed: int, start_step: int = 0, shuffle: bool = True):
        if num_rows <= 0:
            raise ValueError("no rows to sample from")
        self.n, self.b, self.world, self.rank, self.accum = num_rows, micro_batch, world, rank, accumulation
        self.seed, self.start_step, self.shuffle = seed, start_step, shuffle
        self.global_batch = micro_batch * world * accumulation

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=generator)

    def rows(self, start: int, count: int) -> list[int]:
        """stream[start : start + count]."""
        out: list[int] = []
        epoch, offset = divmod(start, self.n)
        while len(out) < count:
            perm = self.permutation(epoch)
            take = perm[offset : offset + count - len(out)].tolist()
            out.extend(take)
            epoch, offset = epoch + 1, 0
        return out

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches of optimizer step `step`."""
        base = step * self.global_batch
        return [self.rows(base + ((m * self.world) + self.rank) * self.b, self.b) for m in range(self.accum)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield from self.micro_batches(step)
            step += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs it for progress estimates
        return 2**62
