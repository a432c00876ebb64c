"""Small-multiple charts as a PNG, drawn with Pillow as `bar_chart.py` draws its bars: one panel
per figure, x against y. `draw_curves` plots a training run's evaluation rows against steps
(train-vae's OUT/eval.png); `panels` is the drawing, also used for scatter plots (benchmarks).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from sendvae_cli.eval.bar_chart import COLOURS, _font, _text_size
from sendvae_cli.images import save_png

PANEL_W, PANEL_H, COLUMNS = 330, 250, 3
TITLES = {"probe_macro_f1": "probe macro-F1 (higher is better)", "probe_micro_f1": "probe micro-F1 (higher is better)",
          "psnr": "PSNR, dB (higher is better)", "ssim": "SSIM (higher is better)", "rfd": "rFD (lower is better)"}


def _range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def _panel(draw, box: tuple[int, int], name: str, xs: Sequence[float], ys: Sequence[float], *, connect: bool,
           colour: str, x_label: str) -> None:
    font, small = _font(14), _font(11)
    ox, oy = box
    left, top, w, h = ox + 58, oy + 28, PANEL_W - 74, PANEL_H - 70
    draw.text((ox + 58, oy + 6), name, fill="black", font=font)
    points = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    draw.rectangle([left, top, left + w, top + h], outline="black")
    if not points:
        draw.text((left + 10, top + h / 2), "no values", fill="black", font=small)
        return
    (x0, x1), (y0, y1) = _range([p[0] for p in points]), _range([p[1] for p in points])
    for i in range(5):  # ticks: four intervals on each axis
        yv, xv = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
        y, x = top + h - h * i / 4, left + w * i / 4
        draw.line([(left, y), (left + w, y)], fill="#e4e4e4" if 0 < i < 4 else "black")
        label = f"{yv:.4g}"
        tw, th = _text_size(draw, label, small)
        draw.text((left - tw - 4, y - th / 2 - 2), label, fill="black", font=small)
        label = f"{xv:.3g}"
        tw, _ = _text_size(draw, label, small)
        draw.text((x - tw / 2, top + h + 4), label, fill="black", font=small)
    tw, _ = _text_size(draw, x_label, small)
    draw.text((left + w / 2 - tw / 2, top + h + 20), x_label, fill="black", font=small)
    xy = [(left + w * (x - x0) / (x1 - x0), top + h - h * (y - y0) / (y1 - y0)) for x, y in points]
    if connect and len(xy) > 1:
        draw.line(xy, fill=colour, width=2)
    for x, y in xy:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def panels(path: Path, title: str, series: Sequence[tuple[str, Sequence[float], Sequence[float | None]]], *,
           x_label: str | Sequence[str], connect: bool = True) -> Path:
    """Write a PNG of one panel per (name, xs, ys) in `series`; lines through the points when `connect`.
    `x_label`: one for every panel, or one per panel."""
    labels = [x_label] * len(series) if isinstance(x_label, str) else list(x_label)
    path = Path(path)
    rows = max(1, math.ceil(len(series) / COLUMNS))
    image = Image.new("RGB", (PANEL_W * min(COLUMNS, max(1, len(series))), 44 + PANEL_H * rows), "white")
    draw = ImageDraw.Draw(image)
    draw.text((14, 12), title, fill="black", font=_font(18))
    for i, (name, xs, ys) in enumerate(series):
        _panel(draw, (PANEL_W * (i % COLUMNS), 44 + PANEL_H * (i // COLUMNS)), name, xs, ys, connect=connect,
               colour=COLOURS[i % len(COLOURS)], x_label=labels[i])
    return save_png(image, path)


def draw_curves(metrics: Path, path: Path, title: str) -> Path:
    """OUT/eval.png: every evaluation figure of a run's metrics.jsonl against steps."""
    from sendvae_cli.eval.vae_row import METRICS, PREFIX, is_row
    from sendvae_cli.train.metrics import read_metrics

    rows = [r for r in read_metrics(metrics) if is_row(r)]
    steps = [r["step"] for r in rows]
    series = [(TITLES[key], steps, [r.get(PREFIX + key) for r in rows]) for key in METRICS]
    return panels(path, title, series, x_label="step")
