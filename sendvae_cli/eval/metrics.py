"""Inception Score and k-NN precision / recall, as the ADM evaluator defines them.

Inception Score (Salimans et al. 2016; ADM `compute_inception_score`): p(y|x) is the softmax of
the 1008 Inception logits *without* the fc bias (ADM multiplies pool_3 by the softmax weights
only; torch-fidelity calls this feature `logits_unbiased`). The samples, in their given order,
are cut into `splits` consecutive parts (np.array_split); per part
IS = exp( mean_x KL(p(y|x) || p(y)) ) with p(y) the part's mean, and the score is the mean over
parts (the standard deviation is reported too). ADM cuts parts of 5,000 images, which is 10 parts
for the standard 50,000. Because each part's KL only needs sum_x p log p and sum_x p, the score
streams: `InceptionScore.update` keeps 1008 + 2 numbers per part.

Precision and recall (Kynkäänniemi et al. 2019; ADM `ManifoldEstimator` with k = 3): the
manifold of a feature set is the union of balls around each of its points with radius the
distance to its k-th nearest neighbour in the same set (the point itself not counted).
Precision = fraction of sample features inside the reference manifold; recall = fraction of
reference features inside the sample manifold. Distances are squared Euclidean, computed in
float32 as |u|^2 - 2 u.v + |v|^2 after subtracting a common shift, clamped at 0, in row blocks
whose size bounds memory (ADM computes the same blocks in float16 when they are finite).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

PR_NEIGHBOURS = 3
IS_SPLITS = 10


def split_bounds(count: int, splits: int) -> list[tuple[int, int]]:
    """The (start, stop) of `splits` consecutive parts of `count` rows, as np.array_split cuts them."""
    edges = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(count), splits)])
    return [(int(edges[i]), int(edges[i + 1])) for i in range(splits)]


class InceptionScore:
    """Streaming Inception Score over rows that arrive in order; the total count is known upfront."""

    def __init__(self, count: int, splits: int = IS_SPLITS, classes: int = 1008):
        if count < splits:
            raise ValueError(f"the Inception Score with {splits} splits needs at least {splits} samples, got {count}")
        self.bounds = split_bounds(count, splits)
        self.prob_sum = np.zeros((splits, classes), dtype=np.float64)
        self.plogp_sum = np.zeros(splits, dtype=np.float64)
        self.seen = 0

    def update(self, logits: torch.Tensor) -> None:
        log_p = torch.log_softmax(logits.to(torch.float64), dim=1)
        p = log_p.exp()
        plogp = (p * log_p).sum(1).cpu().numpy()
        p = p.cpu().numpy()
        start = self.seen
        for part, (lo, hi) in enumerate(self.bounds):
            a, b = max(lo, start), min(hi, start + len(p))
            if a < b:
                self.prob_sum[part] += p[a - start : b - start].sum(0)
                self.plogp_sum[part] += plogp[a - start : b - start].sum()
        self.seen += len(p)

    def scores(self) -> np.ndarray:
        sizes = np.array([hi - lo for lo, hi in self.bounds], dtype=np.float64)
        if self.seen != int(sizes.sum()):
            raise ValueError(f"expected {int(sizes.sum())} rows, got {self.seen}")
        mean_p = self.prob_sum / sizes[:, None]
        entropy_of_mean = -np.sum(np.where(mean_p > 0, mean_p * np.log(np.where(mean_p > 0, mean_p, 1.0)), 0.0), axis=1)
        kl = self.plogp_sum / sizes + entropy_of_mean
        return np.exp(kl)

    def result(self) -> tuple[float, float]:
        scores = self.scores()
        return float(np.mean(scores)), float(np.std(scores))


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """IS (mean, std over splits) of all logits at once."""
    logits = torch.as_tensor(np.asarray(logits))
    accumulator = InceptionScore(len(logits), splits, logits.shape[1])
    accumulator.update(logits)
    return accumulator.result()


def _rows_per_block(columns: int, budget_bytes: int) -> int:
    return max(1, min(1 << 16, budget_bytes // (4 * max(1, columns))))


def _squared_distances(rows: torch.Tensor, cols: torch.Tensor, row_norms: torch.Tensor,
                       col_norms: torch.Tensor) -> torch.Tensor:
    d = rows @ cols.T  # in place from here on: one block-sized buffer
    return d.mul_(-2.0).add_(row_norms[:, None]).add_(col_norms[None, :]).clamp_min_(0.0)


def knn_radii(features: torch.Tensor, k: int = PR_NEIGHBOURS, budget_bytes: int = 256 << 20) -> torch.Tensor:
    """Squared distance of every row to its k-th nearest other row (float32, same device)."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"{k}-nearest-neighbour radii need at least {k + 1} rows, got {n}")
    norms = (features * features).sum(1)
    radii = torch.empty(n, dtype=torch.float32, device=features.device)
    step = _rows_per_block(n, budget_bytes)
    for start in range(0, n, step):
        block = _squared_distances(features[start : start + step], features, norms[start : start + step], norms)
        # k + 1 smallest: the row itself (distance 0) comes first.
        radii[start : start + step] = torch.topk(block, k + 1, dim=1, largest=False).values[:, k]
    return radii


def fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                    budget_bytes: int = 256 << 20) -> float:
    """Fraction of `points` within radius of at least one centre (squared distances <= radii)."""
    point_norms = (points * points).sum(1)
    centre_norms = (centres * centres).sum(1)
    inside = 0
    step = _rows_per_block(centres.shape[0], budget_bytes)
    for start in range(0, points.shape[0], step):
        block = _squared_distances(points[start : start + step], centres, point_norms[start : start + step], centre_norms)
        inside += int((block <= radii[None, :]).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = PR_NEIGHBOURS,
                     device: torch.device | str = "cpu", budget_bytes: int = 256 << 20) -> tuple[float, float]:
    """(precision, recall) of sample features against reference features, k-NN manifolds."""
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
    smp = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
    shift = ref.mean(0, keepdim=True)  # distances are translation invariant; smaller norms, less rounding
    ref = (ref - shift).to(device)
    smp = (smp - shift).to(device)
    ref_radii = knn_radii(ref, k, budget_bytes)
    smp_radii = knn_radii(smp, k, budget_bytes)
    precision = fraction_inside(smp, ref, ref_radii, budget_bytes)
    recall = fraction_inside(ref, smp, smp_radii, budget_bytes)
    return precision, recall


def minimum_counts(k: int = PR_NEIGHBOURS, splits: int = IS_SPLITS) -> dict[str, int]:
    """The fewest images each metric can be computed from."""
    return {"fid": 2, "inception_score": splits, "precision_recall": k + 1}


__all__: Sequence[str] = (
    "IS_SPLITS", "PR_NEIGHBOURS", "InceptionScore", "inception_score", "knn_radii", "fraction_inside",
    "precision_recall", "split_bounds", "minimum_counts",
)
