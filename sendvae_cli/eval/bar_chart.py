"""A grouped bar chart as a PNG, drawn with Pillow.

Pillow already ships with torchvision; a chart of a few bars does not justify matplotlib as a
dependency. One group per feature source (a VAE or a teacher), one bar per metric, the value
printed above each bar, a y axis from 0 to the largest value rounded up.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from sendvae_cli.images import save_png

# Colour-blind-safe (Okabe-Ito) colours, one per metric.
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00"]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _nice_top(value: float) -> float:
    """1.0 for scores (F1, recall), else the value rounded up to a round number."""
    if value <= 1:
        return 1.0
    step = 10 ** math.floor(math.log10(value)) / 2
    return math.ceil(value / step) * step


def grouped_bars(path: Path, title: str, groups: Sequence[str], series: dict[str, Sequence[float]],
                 y_label: str = "") -> Path:
    """Write a PNG: `groups` along x, one bar per entry of `series` (metric name -> value per group)."""
    path = Path(path)
    names = list(series)
    title_font, font, small = _font(18), _font(14), _font(12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    group_room = max([_text_size(measure, g, font)[0] + 24 for g in groups] + [40 + 34 * len(names)])
    width = max(480, 110 + len(groups) * group_room, 90 + _text_size(measure, title, title_font)[0])
    height = 420
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 70, 20, 60, 90
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = _nice_top(max([v for values in series.values() for v in values] + [0.0]))

    draw.text((left - 50, 14), title, fill="black", font=title_font)
    # Axis, grid lines and ticks.
    for i in range(6):
        value = top_value * i / 5
        y = top + plot_h - plot_h * i / 5
        draw.line([(left, y), (left + plot_w, y)], fill="#dddddd" if i else "black")
        label = f"{value:.2f}"
        tw, th = _text_size(draw, label, small)
        draw.text((left - tw - 6, y - th / 2 - 2), label, fill="black", font=small)
    draw.line([(left, top), (left, top + plot_h)], fill="black")
    if y_label:
        x0, y0, x1, y1 = draw.textbbox((0, 0), y_label, font=font)
        label_image = Image.new("RGB", (x1 - x0 + 4, y1 - y0 + 4), "white")
        ImageDraw.Draw(label_image).text((2 - x0, 2 - y0), y_label, fill="black", font=font)
        label_image = label_image.rotate(90, expand=True)
        image.paste(label_image, (6, top + plot_h // 2 - label_image.height // 2))

    # Bars.
    group_w = plot_w / max(1, len(groups))
    bar_w = min(34, (group_w - 20) / max(1, len(names)))
    for g, group in enumerate(groups):
        x0 = left + g * group_w + (group_w - bar_w * len(names)) / 2
        for m, name in enumerate(names):
            value = float(series[name][g])
            h = plot_h * max(0.0, value) / top_value
            x = x0 + m * bar_w
            draw.rectangle([x + 2, top + plot_h - h, x + bar_w - 2, top + plot_h], fill=COLOURS[m % len(COLOURS)])
            text = f"{value:.3f}"
            tw, th = _text_size(draw, text, small)
            draw.text((x + bar_w / 2 - tw / 2, top + plot_h - h - th - 6), text, fill="black", font=small)
        tw, _ = _text_size(draw, group, font)
        draw.text((left + g * group_w + group_w / 2 - tw / 2, top + plot_h + 8), group, fill="black", font=font)

    # Legend.
    x = left
    for m, name in enumerate(names):
        draw.rectangle([x, height - 30, x + 14, height - 16], fill=COLOURS[m % len(COLOURS)])
        draw.text((x + 20, height - 32), name, fill="black", font=font)
        x += 40 + _text_size(draw, name, font)[0]
    return save_png(image, path)
