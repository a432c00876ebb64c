"""Per-sample randomness: the initial noise and the SDE noise of sample i come from one generator
seeded by (seed, i), drawn in a fixed order (initial noise, then one tensor per stochastic step).

So a sample does not depend on the batch it shares, the number of processes or where a run resumed.
Generators live on the sampling device: CUDA and CPU draw different numbers for the same seed, so
the images of a seed are the same on every machine of the same device type.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sendvae_cli.seeds import sample_seed


class SampleNoise:
    """The noise of a batch of samples, each drawn from its own generator."""

    def __init__(self, seed: int, indices: Sequence[int], shape: Sequence[int], device: torch.device):
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.generators = []
        for index in indices:
            g = torch.Generator(device=self.device)
            g.manual_seed(sample_seed(seed, int(index)))
            self.generators.append(g)

    def draw(self) -> torch.Tensor:
        """The next standard normal tensor (B, *shape) in float32: first the initial noise, then step noise."""
        return torch.stack([torch.randn(self.shape, generator=g, device=self.device) for g in self.generators])

    def step_noise(self, step: int) -> torch.Tensor:
        """`noise_fn` for the SDE sampler: called once per stochastic step, in order."""
        return self.draw()
