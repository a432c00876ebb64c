"""Independent float64 references for the metric tests (numpy only, written from the definitions)."""

import numpy as np


def ref_fd(x1: np.ndarray, x2: np.ndarray) -> float:
    """Fréchet distance of two feature sets, float64, through the nuclear norm (exact for singular covariances)."""
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    n1, n2 = len(x1), len(x2)
    cross = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = x1.mean(0) - x2.mean(0)
    return float(diff @ diff + np.sum(c1 * c1) / (n1 - 1) + np.sum(c2 * c2) / (n2 - 1) - 2 * cross)


def ref_precision_recall(ref: np.ndarray, smp: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al.'s precision and recall with k-th neighbour radii, by brute force."""
    ref, smp = np.asarray(ref, np.float64), np.asarray(smp, np.float64)

    def d2(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    ref_radii = np.sort(d2(ref, ref), axis=1)[:, k]
    smp_radii = np.sort(d2(smp, smp), axis=1)[:, k]
    precision = np.mean((d2(smp, ref) <= ref_radii[None, :]).any(1))
    recall = np.mean((d2(ref, smp) <= smp_radii[None, :]).any(1))
    return float(precision), float(recall)
