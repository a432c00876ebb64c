"""Class labels of a sampling run: a function of (scheme, n, num_classes, seed) only.

- balanced (the default, as REPA-E's re-reported numbers): exactly n // K images per class; the
  n % K remaining images go to distinct classes chosen by the seed; the order is shuffled by the seed.
- random: i.i.d. uniform labels (what DiT / SiT / REPA's sample_ddp.py do); label i depends on (seed, i).
- class K: every image of class K.
- none: an unconditional model.
"""

from __future__ import annotations

import numpy as np

from sendvae_cli.seeds import label_rng

SCHEMES = ("balanced", "random")


def balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    per_class, remainder = divmod(n, num_classes)
    extra = label_rng(seed, 1).permutation(num_classes)[:remainder]
    counts = np.full(num_classes, per_class, dtype=np.int64)
    counts[extra] += 1
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), counts)
    return label_rng(seed, 2).permutation(labels)


def random_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    return label_rng(seed, 3).integers(0, num_classes, size=n, dtype=np.int64)


def make_labels(scheme: str, n: int, num_classes: int, seed: int, class_id: int | None = None) -> np.ndarray | None:
    """int64 labels (n,), or None for an unconditional model (num_classes == 0)."""
    if not num_classes:
        return None
    if class_id is not None:
        return np.full(n, class_id, dtype=np.int64)
    if scheme == "balanced":
        return balanced_labels(n, num_classes, seed)
    if scheme == "random":
        return random_labels(n, num_classes, seed)
    raise ValueError(f"unknown label scheme {scheme!r} (known: {', '.join(SCHEMES)})")


def describe(scheme: str, num_classes: int, class_id: int | None) -> str:
    if not num_classes:
        return "none"
    return f"class {class_id}" if class_id is not None else scheme
