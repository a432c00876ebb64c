"""A preview grid: one row per class, its class id written at the row's left."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sendvae_cli.images import save_png


def grid_classes(rows: int, num_classes: int) -> list[int]:
    """`rows` class ids spread evenly over 0 .. num_classes - 1."""
    rows = min(rows, num_classes)
    return sorted({int(round(k * (num_classes - 1) / max(rows - 1, 1))) for k in range(rows)})


def parse_grid(text: str) -> tuple[int, int]:
    """'8x4' -> (8 rows, 4 columns)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(text)
    return int(parts[0]), int(parts[1])


def save_grid(path: Path, images: np.ndarray, row_labels: Sequence[str], columns: int, pad: int = 2) -> Path:
    """images: uint8 (rows * columns, H, W, 3) in row order -> one PNG with a label margin."""
    rows = len(row_labels)
    h, w = images.shape[1:3]
    font = ImageFont.load_default()
    margin = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) for text in row_labels) + 2 * pad
    canvas = Image.new("RGB", (margin + columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(row_labels):
        top = pad + r * (h + pad)
        draw.text((pad, top + max(0, h // 2 - 6)), text, fill="black", font=font)
        for c in range(columns):
            canvas.paste(Image.fromarray(images[r * columns + c]), (margin + pad + c * (w + pad), top))
    return save_png(canvas, path)
