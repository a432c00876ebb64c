"""Image grids of a run: originals on top, reconstructions (or samples) below, as a PNG.

The images shown are spread across the classes (`spread_rows`), not the first few files in
folder order (which are usually all one class), and the grid carries a title line (the step)
and a caption over each column (the class name or row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sendvae_cli.images import save_png, to_uint8

TEXT_HEIGHT = 12  # pixels per line of text (PIL's built-in bitmap font is 11 high)


def spread_rows(labels: Sequence[int], count: int) -> list[int]:
    """`count` row indices spread across classes: the first row of each class in label order, then
    the second of each, ...; without labels (all negative), rows evenly spaced over the data."""
    labels = [int(x) for x in labels]
    count = min(count, len(labels))
    if not labels or all(x < 0 for x in labels):
        return sorted({int(i) for i in np.linspace(0, len(labels) - 1, count).round()}) if count else []
    by_class: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        by_class.setdefault(label, []).append(row)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count:
        for rows in queues:
            if depth < len(rows) and len(chosen) < count:
                chosen.append(rows[depth])
        depth += 1
    return chosen


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def grid_image(rows: list[torch.Tensor], pad: int = 2, title: str = "", captions: Sequence[str] = ()) -> np.ndarray:
    """(H, W, 3) uint8: a title line, a caption per column, then one image row per tensor."""
    arrays = [to_uint8(r) for r in rows]
    n, h, w, _ = arrays[0].shape
    text_lines = int(bool(title)) + int(bool(captions))
    top0 = text_lines * TEXT_HEIGHT
    grid = np.full((top0 + len(arrays) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(arrays):
        for c in range(n):
            top, left = top0 + pad + r * (h + pad), pad + c * (w + pad)
            grid[top : top + h, left : left + w] = row[c]
    if not text_lines:
        return grid
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    if title:
        draw.text((pad, 0), _fit(draw, title, font, grid.shape[1] - pad), fill=(0, 0, 0), font=font)
    for c, caption in enumerate(list(captions)[:n]):
        draw.text((pad + c * (w + pad), top0 - TEXT_HEIGHT), _fit(draw, str(caption), font, w), fill=(0, 0, 0), font=font)
    return np.asarray(image)


def save_grid(rows: list[torch.Tensor], path: Path, pad: int = 2, title: str = "",
              captions: Sequence[str] = ()) -> np.ndarray:
    """Write the grid as a PNG (atomically) and return it, e.g. for a tracker."""
    grid = grid_image(rows, pad, title, captions)
    save_png(grid, path)
    return grid
