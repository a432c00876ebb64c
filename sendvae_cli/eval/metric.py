"""The metric contract: a figure `sendvae fid` computes from the extractor's features.

`fid` streams the samples and the reference through one extractor (Inception, or a teacher)
once. Its own figures (FID or FD, sFID, the Inception Score, precision and recall) come from
running moments; every registered metric then gets the pooled features themselves and returns
its figures and the table rows that show them. KID is the first metric added this way
(`eval/kid.py`, registered in `eval/builtin_metrics.py`); a plugin adds one through the
`register_metrics` hook with a `MetricSpec`.

The features are the ones `fid` already keeps for precision and recall: every sample used, and
of the reference an evenly strided subset of at most `--pr-reference-cap` rows, cached with the
reference statistics. A reference that holds statistics only (an ADM batch without images)
has no features: a metric then returns None for its figures and says so in its rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch


@dataclass(frozen=True)
class Features:
    """What a metric sees."""

    samples: np.ndarray            # (N, D) float32: the pooled features of every sample used
    reference: np.ndarray | None   # (M, D) float32: the reference's, or None (statistics only)
    extractor: str                 # the extractor's name (`inception`, or a teacher's)
    device: torch.device           # where the extractor ran: heavy algebra may go there too


@dataclass(frozen=True)
class Row:
    """One row of `fid`'s table: the metric's label, its value as shown, and what it is."""

    label: str
    value: str
    definition: str


class Metric(ABC):
    """A figure computed from `Features`. `name` is the key of its main figure in the JSON's
    `metrics`; further figures (a standard deviation, say) use keys that start with it."""

    name: ClassVar[str]

    @abstractmethod
    def compute(self, features: Features) -> dict[str, float | None]:
        """The figures, by JSON key; None where the features do not allow one."""

    @abstractmethod
    def rows(self, figures: Mapping[str, float | None]) -> list[Row]:
        """The table rows for these figures (as `compute` returned them)."""

    def protocol(self) -> dict[str, Any]:
        """How the figures were computed (settings, definitions), for the JSON's protocol."""
        return {}


def show(value: float | None, digits: int = 4) -> str:
    """A figure as the table shows it ("-" for None)."""
    return "-" if value is None else f"{value:.{digits}f}"


__all__ = ["Features", "Row", "Metric", "show"]
