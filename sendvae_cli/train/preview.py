"""Reconstruction grids: originals on top, reconstructions below, as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sendvae_cli.io import atomic_file, write_errors


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(rows: list[torch.Tensor], path: Path, pad: int = 2) -> None:
    arrays = [to_uint8(r) for r in rows]
    n, h, w, _ = arrays[0].shape
    grid = np.full((len(arrays) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(arrays):
        for c in range(n):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            grid[top : top + h, left : left + w] = row[c]
    with write_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
