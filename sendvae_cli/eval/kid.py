"""Kernel Inception Distance (Bińkowski et al. 2018), as torch-fidelity computes it.

KID is the squared maximum mean discrepancy between the sample and the reference features under
the cubic polynomial kernel k(x, y) = (x . y / d + 1)^3, estimated without bias on subsets: each
of `subsets` rounds draws `subset_size` samples and `subset_size` reference rows without
replacement (one numpy RandomState, samples first, as torch-fidelity draws them), and

    MMD^2 = (sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1)) - 2 sum_{i,j} k(x_i, y_j) / m^2.

The figure is the mean over rounds, with their standard deviation. torch-fidelity's defaults:
100 subsets of 1,000 rows and seed 2020; where fewer rows exist, the subsets take all of the
smaller set (torch-fidelity refuses instead), and the JSON records the size used. Unlike FID,
the estimate is unbiased at any sample count, which is why small evaluations report it. Kernels
are computed in float64 on the extractor's device.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from sendvae_cli.eval.metric import Features, Metric, Row, show

SUBSETS = 100
SUBSET_SIZE = 1000
SEED = 2020  # torch-fidelity's rng_seed


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased MMD^2 of two equal-sized sets under (x . y / d + 1)^3."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within = (k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())
    return float(within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kernel_distance(samples: np.ndarray, reference: np.ndarray, *, subsets: int = SUBSETS,
                    subset_size: int = SUBSET_SIZE, seed: int = SEED,
                    device: torch.device | str = "cpu") -> tuple[float, float, int]:
    """(KID mean, standard deviation over subsets, the subset size used)."""
    size = min(subset_size, len(samples), len(reference))
    if size < 2:
        raise ValueError(f"KID needs at least 2 rows in each set, got {len(samples)} and {len(reference)}")
    rng = np.random.RandomState(seed)
    x_all = torch.as_tensor(samples, device=device, dtype=torch.float64)
    y_all = torch.as_tensor(reference, device=device, dtype=torch.float64)
    values = np.empty(subsets)
    for i in range(subsets):
        x = x_all[torch.as_tensor(rng.choice(len(samples), size, replace=False), device=device)]
        y = y_all[torch.as_tensor(rng.choice(len(reference), size, replace=False), device=device)]
        values[i] = polynomial_mmd2(x, y)
    return float(values.mean()), float(values.std()), size


class KID(Metric):
    name = "kid"

    def __init__(self, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE, seed: int = SEED):
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed
        self.used_size: int | None = None

    def compute(self, features: Features) -> dict[str, float | None]:
        if features.reference is None or min(len(features.samples), len(features.reference)) < 2:
            return {"kid": None, "kid_std": None}
        mean, std, self.used_size = kernel_distance(features.samples, features.reference, subsets=self.subsets,
                                                    subset_size=self.subset_size, seed=self.seed,
                                                    device=features.device)
        return {"kid": mean, "kid_std": std}

    def rows(self, figures: Mapping[str, float | None]) -> list[Row]:
        if figures.get("kid") is None:
            return [Row("KID", "-", "needs the reference's features (its images)")]
        return [Row("KID", f"{show(figures['kid'], 5)} ± {show(figures['kid_std'], 5)}",
                    f"cubic kernel MMD², {self.subsets} subsets of {self.used_size}")]

    def protocol(self) -> dict[str, Any]:
        return {"kernel": "(x . y / d + 1)^3", "estimator": "unbiased MMD^2 (torch-fidelity's)",
                "subsets": self.subsets, "subset_size": self.used_size, "requested_subset_size": self.subset_size,
                "seed": self.seed, "precision": "float64"}


__all__ = ["KID", "kernel_distance", "polynomial_mmd2"]
