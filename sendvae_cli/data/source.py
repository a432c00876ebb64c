"""What every image dataset gives the pipelines: fixed rows of uint8 images and labels.

An `ImageSource` is a map-style torch Dataset. Row `i` always holds the same image (row order
is part of a dataset's identity and is recorded in every cache made from it). Images come out
as uint8 tensors (3, R, R) at the source's resolution, so DataLoader workers ship 4x fewer
bytes than float; `images.to_model_range` turns a batch into the [-1, 1] floats models take.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

NO_LABEL = -1
# Split codes of attribute datasets (`split_codes()`): the official train / validation / test rows.
SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2


class ImageSource(torch.utils.data.Dataset, ABC):
    resolution: int
    num_classes: int | None = None
    class_names: list[str] | None = None
    attribute_names: tuple[str, ...] = ()

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...

    @abstractmethod
    def row_id(self, index: int) -> str:
        """A stable identifier of row `index` (a relative path, or 'shapes/<i>')."""

    def label(self, index: int) -> int:
        return self[index][1]

    def attributes(self, index: int) -> np.ndarray:
        """Binary attribute vector of row `index` (len(attribute_names),), for probes."""
        raise NotImplementedError(f"{type(self).__name__} has no attributes")  # pragma: no cover

    def attribute_matrix(self) -> np.ndarray:
        """(len(self), len(attribute_names)) uint8 0/1: every row's attributes, for probes."""
        return np.stack([self.attributes(i) for i in range(len(self))]).astype(np.uint8)

    def split_codes(self) -> np.ndarray:
        """(len(self),) int8: TRAIN, VAL or TEST per row (attribute datasets say which, for probes)."""
        raise NotImplementedError(f"{type(self).__name__} has no train/val/test split")  # pragma: no cover

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able description of where the rows come from (stored in caches)."""

    def row_ids(self) -> list[str]:
        return [self.row_id(i) for i in range(len(self))]

    def row_order_sha256(self) -> str:
        digest = hashlib.sha256()
        for i in range(len(self)):
            digest.update(self.row_id(i).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()


class Subset(ImageSource):
    """The first `count` rows of another source."""

    def __init__(self, source: ImageSource, count: int):
        self.source = source
        self.count = min(count, len(source))
        self.resolution = source.resolution
        self.num_classes = source.num_classes
        self.class_names = source.class_names
        self.attribute_names = source.attribute_names

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.source[index]

    def row_id(self, index: int) -> str:
        return self.source.row_id(index)

    def label(self, index: int) -> int:
        return self.source.label(index)

    def attributes(self, index: int) -> np.ndarray:
        return self.source.attributes(index)

    def attribute_matrix(self) -> np.ndarray:
        return self.source.attribute_matrix()[: self.count]

    def split_codes(self) -> np.ndarray:
        return self.source.split_codes()[: self.count]

    def describe(self) -> dict[str, Any]:
        return dict(self.source.describe(), rows=self.count)
