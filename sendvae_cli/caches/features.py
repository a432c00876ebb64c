"""Reading teacher tokens back from an `extract` cache during training."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from sendvae_cli.data.source import ImageSource
from sendvae_cli.errors import UserError

IN_MEMORY_BYTES = 1 << 30  # caches up to 1 GiB are read into memory once


class TeacherTokens:
    """Tokens of an `extract` cache, checked against the images they must belong to."""

    def __init__(self, path: Path, source: ImageSource, teacher: str | None = None):
        self.path = Path(path)
        option = f"--teacher-features {self.path}"
        if not self.path.is_file():
            raise UserError(f"{option}: no such file")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise UserError(f"{option}: not a readable HDF5 file ({error})") from None
        attrs = self.file.attrs
        if not attrs.get("complete", False) or "tokens" not in self.file:
            raise UserError(f"{option}: not a finished `sendvae extract` cache")
        if teacher is not None and attrs.get("teacher") != teacher:
            raise UserError(f"{option}: holds tokens of teacher {attrs.get('teacher')!r}, not {teacher!r}")
        if int(attrs["resolution"]) != source.resolution:
            raise UserError(f"{option}: extracted at {int(attrs['resolution'])} px, the images are at {source.resolution} px")
        if self.file["tokens"].shape[0] != len(source):
            raise UserError(f"{option}: holds {self.file['tokens'].shape[0]} rows, the images have {len(source)}")
        if attrs.get("row_order_sha256") != source.row_order_sha256():
            described = json.loads(attrs.get("source", "{}"))
            raise UserError(f"{option}: was extracted from other images or another order "
                            f"({described.get('kind')} {described.get('root', described.get('seed', ''))}); "
                            f"extract it from the same DATA")
        tokens = self.file["tokens"]
        # A cache that fits comfortably is read once: fancy-indexed HDF5 reads cost ~2 ms per row,
        # a third of a tiny VAE's CPU step. Bigger ones (ImageNet: ~100 GB) stay on disk.
        self.tokens = tokens[()] if tokens.size * tokens.dtype.itemsize <= IN_MEMORY_BYTES else tokens
        self.teacher = str(attrs.get("teacher"))
        self.width = int(attrs["teacher_width"])
        self.grid = tuple(int(v) for v in attrs["token_grid"])

    def rows(self, indices: torch.Tensor | list[int]) -> torch.Tensor:
        """Tokens of the given rows, float32, in the order asked for."""
        index = np.asarray(indices, dtype=np.int64)
        if isinstance(self.tokens, np.ndarray):
            return torch.from_numpy(self.tokens[index].astype(np.float32))
        order = np.argsort(index)
        sorted_rows = index[order]
        unique, inverse = np.unique(sorted_rows, return_inverse=True)  # h5py needs increasing indices
        data = self.tokens[unique][inverse]
        out = np.empty_like(data)
        out[order] = data
        return torch.from_numpy(out.astype(np.float32))

    def close(self) -> None:
        self.file.close()
