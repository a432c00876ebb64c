"""Gaussian statistics of features and the Fréchet distance between two of them, in float64.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1 S2)^(1/2) )

The trace of the matrix square root is computed without a general (non-symmetric) `sqrtm`:
S1 S2 is similar to the symmetric positive semi-definite matrix M = S1^(1/2) S2 S1^(1/2), so
tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(M)). Both decompositions are `eigh` / `eigvalsh` of
symmetric matrices, which are stable and always real. Eigenvalues below the matrix's rounding floor
(n * eps * largest eigenvalue) are treated as exactly zero: they are noise of either sign, and
their square roots (~1e-7 of the scale each, thousands of them for a rank-deficient covariance
estimated from fewer samples than dimensions) would otherwise bias the result. This is where
scipy's `sqrtm` fails (NaN, large imaginary parts, or inflated values after some releases).

`Moments` accumulates mean and covariance batch by batch (shifted sums in float64, so memory is
one d x d matrix whatever the number of samples); its covariance is the unbiased one (n - 1),
as `np.cov(x, rowvar=False)` and ADM's evaluator compute it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Gaussian:
    """Mean and covariance of a feature set (float64) and the number of rows behind them."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None


def _floor(eigenvalues: np.ndarray) -> float:
    top = float(np.max(np.abs(eigenvalues))) if eigenvalues.size else 0.0
    return eigenvalues.size * np.finfo(np.float64).eps * top


def _psd_eig(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric PSD matrix above its rounding floor (the rest are zero)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    keep = values > _floor(values)
    return values[keep], vectors[:, keep]


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (noise-floor eigenvalues -> 0)."""
    values, vectors = _psd_eig(np.asarray(matrix, dtype=np.float64))
    return (vectors * np.sqrt(values)) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^(1/2)) for symmetric PSD matrices.

    With sigma1 = V diag(l) V^T over its r non-zero eigenvalues, sqrt(sigma1) sigma2 sqrt(sigma1)
    = V K V^T with K = diag(sqrt l) V^T sigma2 V diag(sqrt l) (r x r), so the wanted eigenvalues
    are those of K: exact, and cheap when sigma1 has low rank (fewer samples than dimensions).
    """
    values, vectors = _psd_eig(np.asarray(sigma1, dtype=np.float64))
    if values.size == 0:
        return 0.0
    scaled = vectors * np.sqrt(values)  # V diag(sqrt l), d x r
    middle = scaled.T @ np.asarray(sigma2, dtype=np.float64) @ scaled
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    eig = np.where(eig > _floor(eig), eig, 0.0)
    return float(np.sum(np.sqrt(eig)))


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """Squared Fréchet distance between two Gaussians, float64; never NaN, never below 0."""
    mu1, mu2 = np.asarray(a.mu, dtype=np.float64), np.asarray(b.mu, dtype=np.float64)
    s1, s2 = np.asarray(a.sigma, dtype=np.float64), np.asarray(b.sigma, dtype=np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics of different shapes: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    # tr sqrt(S1 S2) = tr sqrt(S2 S1): decompose the one estimated from fewer rows (lower rank, cheaper).
    if (b.count or np.inf) < (a.count or np.inf):
        s1, s2 = s2, s1
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(value, 0.0)


class Moments:
    """Streaming mean and unbiased covariance of row vectors, in float64 on any torch device."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.dim = dim
        self.device = torch.device(device)
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)

    def update(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.device, torch.float64)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) rows, got {tuple(rows.shape)}")
        if rows.shape[0] == 0:
            return
        if self.shift is None:  # shifting by a rough mean keeps the sums free of cancellation
            self.shift = rows.mean(0)
        centred = rows - self.shift
        self.sum += centred.sum(0)
        self.outer += centred.T @ centred
        self.count += rows.shape[0]

    def gaussian(self) -> Gaussian:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 rows, got {self.count}")
        mean_c = self.sum / self.count
        sigma = (self.outer - self.count * torch.outer(mean_c, mean_c)) / (self.count - 1)
        sigma = (sigma + sigma.T) / 2.0
        mu = self.shift + mean_c
        return Gaussian(mu.cpu().numpy(), sigma.cpu().numpy(), self.count)
