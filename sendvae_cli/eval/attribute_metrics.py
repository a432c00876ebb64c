"""Multi-label attribute metrics of a probe: F1 (macro, micro, per attribute), top-k recall, accuracy.

All figures come from 0/1 matrices (M images x A attributes) of truths and predictions, plus the
probe's scores (logits) for the ranking metric. Plain numpy, so nothing beyond the runtime
dependencies is needed; the definitions match scikit-learn's where it has one:

* per-attribute F1 = 2 TP / (2 TP + FP + FN); an attribute with no true and no predicted
  positives has F1 = 0 (scikit-learn's `f1_score(..., zero_division=0)`), so an attribute the
  evaluation split never shows pulls the macro mean down instead of being silently dropped;
* macro F1 = the mean of the per-attribute F1 (`average="macro"`);
* micro F1 = 2 TP / (2 TP + FP + FN) from TP / FP / FN summed over attributes (`average="micro"`);
* top-k recall (the DeepFashion convention) = sum over images of |true attributes among the k
  best-scored ones| / sum over images of |true attributes|; an image without positives adds 0 to
  both sums. Ties between equal scores go to the lower attribute index, so the figure is
  deterministic;
* accuracy = the fraction of (image, attribute) entries predicted right.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _binary(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (images, attributes) array, got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1")
    return array.astype(bool)


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2 TP / (2 TP + FP + FN), and 0 where the denominator is 0 (no true, no predicted positives)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def attribute_metrics(y_true: Any, y_pred: Any, scores: Any, k: int = 5) -> dict[str, Any]:
    """JSON-able metrics of predictions `y_pred` (M, A) 0/1 against `y_true` (M, A) 0/1, with the
    scores (M, A) (logits or probabilities: only their order per image matters) for top-k recall."""
    truth, predicted = _binary("y_true", y_true), _binary("y_pred", y_pred)
    scores = np.asarray(scores)
    if predicted.shape != truth.shape or scores.shape != truth.shape:
        raise ValueError(f"y_true {truth.shape}, y_pred {predicted.shape} and scores {scores.shape} "
                         f"must have the same shape")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rows, attributes = truth.shape
    tp = (truth & predicted).sum(axis=0)
    fp = (~truth & predicted).sum(axis=0)
    fn = (truth & ~predicted).sum(axis=0)
    per_attribute = f1_from_counts(tp, fp, fn)
    micro = f1_from_counts(tp.sum(), fp.sum(), fn.sum())

    # Top-k: a stable sort of the negated scores puts the best first and ties in index order.
    top = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, : min(k, attributes)]
    hits = int(np.take_along_axis(truth, top, axis=1).sum())
    positives = int(truth.sum())
    return {
        "macro_f1": float(per_attribute.mean()) if attributes else 0.0,
        "micro_f1": float(micro),
        "per_attribute_f1": [float(v) for v in per_attribute],
        "support": [int(v) for v in truth.sum(axis=0)],
        f"top{k}_recall": hits / positives if positives else 0.0,
        "accuracy": float((truth == predicted).mean()) if truth.size else 0.0,
        "rows": int(rows),
    }
