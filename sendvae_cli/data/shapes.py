"""`shapes`: a procedural image dataset with known generative factors.

Every row is one coloured shape on a plain background. Seven factors are drawn uniformly and
independently per row, so each is a clean target for attribute linear probes, and the shape is
the class label for class-conditional generation:

    shape       circle, square, triangle, diamond, cross      (the label)
    colour      red, orange, yellow, green, cyan, blue, purple, magenta
    size        small, medium, large
    hpos        left, centre, right
    vpos        top, middle, bottom
    background  white, grey, black, sand
    texture     plain, stripes, dots, checker                 (modulates the fill brightness)

plus continuous nuisance that no attribute names: rotation (+-15 degrees), size and position
jitter inside their bin, the texture's phase, and a faint linear background gradient.

Row `i` is drawn from `np.random.default_rng([seed, i])` alone, so it never depends on how many
rows the dataset has (a small dataset is a prefix of a big one), and drawing factors costs no
rendering. Images are rendered with numpy from signed distance functions on the pixel-centre
grid, with a one-pixel-wide linear coverage ramp for antialiasing, at any resolution >= 16.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sendvae_cli.data.source import TEST, TRAIN, VAL, ImageSource
from sendvae_cli.seeds import shape_row_rng

VERSION = 1  # bump whenever a row's pixels or factors change: caches record it

FACTORS: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "diamond", "cross"),
    "colour": ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta"),
    "size": ("small", "medium", "large"),
    "hpos": ("left", "centre", "right"),
    "vpos": ("top", "middle", "bottom"),
    "background": ("white", "grey", "black", "sand"),
    "texture": ("plain", "stripes", "dots", "checker"),
}
CLASS_NAMES: tuple[str, ...] = FACTORS["shape"]
NUM_CLASSES = len(CLASS_NAMES)
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(f"{f}={v}" for f, values in FACTORS.items() for v in values)
MIN_RESOLUTION = 16

_NUM_VALUES = np.array([len(v) for v in FACTORS.values()])
_OFFSETS = np.concatenate([[0], np.cumsum(_NUM_VALUES)[:-1]])  # first attribute column per factor

# RGB in [0, 255]. Hues are saturated and far apart so that even darkened by a texture the
# hue stays readable; none is close to a background colour.
COLOURS = np.array(
    [
        [220, 40, 40],  # red
        [245, 140, 20],  # orange
        [235, 215, 30],  # yellow
        [40, 170, 60],  # green
        [30, 200, 210],  # cyan
        [40, 70, 220],  # blue
        [130, 50, 200],  # purple
        [220, 50, 190],  # magenta
    ],
    dtype=np.float32,
)
BACKGROUNDS = np.array(
    [
        [245, 245, 245],  # white
        [128, 128, 128],  # grey
        [15, 15, 15],  # black
        [215, 195, 150],  # sand
    ],
    dtype=np.float32,
)

# Geometry in image units (the image is the unit square). `r` is the half-extent of the shape's
# axis-aligned bounding box, whatever the shape and rotation, so with the largest size at the
# most extreme position the shape keeps a >= 0.05 margin (1.7 px at 32 px) from the border.
SIZES = (0.12, 0.165, 0.21)  # r per size bin; jittered by +-5%, so the bins never overlap
POSITIONS = (0.3, 0.5, 0.7)  # bin centres along each axis; jittered by +-0.025
SIZE_JITTER = 0.05
POSITION_JITTER = 0.025
MAX_ROTATION = math.radians(15)  # small, so a square never turns into a diamond, nor a + an x
TEXTURE_PERIOD = 0.08  # ~2.5 px at 32 px (still visible), 20 px at 256 px
TEXTURE_DARKEN = 0.45  # dark parts of a texture keep 55% of the fill's brightness
MAX_GRADIENT = 0.06  # background brightness change, in 255ths per image unit


@dataclass(frozen=True)
class ShapeRow:
    """Everything that decides one row's image: factor indices plus continuous nuisance."""

    factors: tuple[int, ...]  # index of the value of each factor, in FACTORS order
    cx: float  # shape centre, image units, x to the right
    cy: float  # y downwards
    r: float  # half-extent (see SIZES)
    angle: float  # radians, counter-clockwise
    phase: tuple[float, float]  # texture offset, in image units
    gradient: tuple[float, float]  # background brightness slope along x and y, in [0, 1] units

    @property
    def shape(self) -> int:
        return self.factors[0]


def draw_row(seed: int, index: int) -> ShapeRow:
    """The factors of row `index`: cheap (no rendering), a function of (seed, index) only."""
    rng = shape_row_rng(seed, index)
    factors = tuple(int(v) for v in rng.integers(0, _NUM_VALUES))
    u = rng.random(8).tolist()  # continuous nuisance, drawn in one go after the factors
    _, _, size, hpos, vpos, _, _ = factors
    grad_angle = 2 * math.pi * u[6]
    grad = MAX_GRADIENT * u[7]
    return ShapeRow(
        factors=factors,
        cx=POSITIONS[hpos] + POSITION_JITTER * (2 * u[0] - 1),
        cy=POSITIONS[vpos] + POSITION_JITTER * (2 * u[1] - 1),
        r=SIZES[size] * (1 + SIZE_JITTER * (2 * u[2] - 1)),
        angle=MAX_ROTATION * (2 * u[3] - 1),
        phase=(TEXTURE_PERIOD * u[4], TEXTURE_PERIOD * u[5]),
        gradient=(grad * math.cos(grad_angle), grad * math.sin(grad_angle)),
    )


# --- signed distance functions: negative inside, in image units; q = shape-local coords, y up.
# Polygons use the max of their edges' half-plane distances: the zero set is exact and the
# distance is exact near edges, which is all a one-pixel coverage ramp needs.


def _sdf(shape: int, qx: np.ndarray, qy: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(qx), np.abs(qy)
    if shape == 0:  # circle
        return np.sqrt(qx * qx + qy * qy) - 0.9 * r
    if shape == 1:  # square; half-side 0.8r so rotated by 15 degrees it still fits in r
        return np.maximum(ax, ay) - 0.8 * r
    if shape == 2:  # equilateral triangle pointing up, circumradius r, centred on its centroid
        apothem = 0.5 * r
        # bottom edge has normal (0, -1); the two upper ones (+-sin 60, cos 60)
        return np.maximum(-qy - apothem, 0.8660254 * ax + 0.5 * qy - apothem)
    if shape == 3:  # diamond: rhombus, half-diagonals 0.6r across and r tall (never a square)
        a, b = 0.6 * r, r
        return (b * ax + a * ay - a * b) / math.hypot(a, b)
    # cross: union of two bars, arms 0.92r long and 0.3r half-wide
    long, half = 0.92 * r, 0.3 * r
    return np.minimum(np.maximum(ax - long, ay - half), np.maximum(ax - half, ay - long))


def _cell_distance(t: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """For coordinate t on a grid of cells of width `cell`: (cell parity, distance to a cell edge)."""
    s = t / cell
    parity = np.floor(s).astype(np.int32) & 1
    return parity, np.abs(s - np.round(s)) * cell


def _texture(texture: int, qx: np.ndarray, qy: np.ndarray, px: float) -> np.ndarray | float:
    """Darkening mask in [0, 1] (1 = dark part), antialiased like the shape edge."""
    if texture == 0:  # plain
        return 0.0
    half = TEXTURE_PERIOD / 2
    if texture == 1:  # diagonal stripes, half dark
        parity, dist = _cell_distance((qx + qy) * 0.70710678, half)
        signed = np.where(parity == 1, -dist, dist)
    elif texture == 2:  # dots of radius 0.3 period on a square grid
        dx = qx - TEXTURE_PERIOD * np.round(qx / TEXTURE_PERIOD)
        dy = qy - TEXTURE_PERIOD * np.round(qy / TEXTURE_PERIOD)
        signed = np.sqrt(dx * dx + dy * dy) - 0.3 * TEXTURE_PERIOD
    else:  # checker of half-period squares
        px_, dx = _cell_distance(qx, half)
        py_, dy = _cell_distance(qy, half)
        dist = np.minimum(dx, dy)
        signed = np.where((px_ ^ py_) == 1, -dist, dist)
    return np.clip(0.5 - signed / px, 0.0, 1.0)


def render(row: ShapeRow, resolution: int) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Render one row: (float32 RGB image (3, R, R) in [0, 255], coverage of the box, box).

    Only the shape's bounding box (plus the antialiasing margin) is evaluated; the background
    elsewhere is a separable linear gradient, so cost grows with the shape, not the image.
    """
    res = resolution
    px = 1.0 / res  # one pixel, in image units: the width of the coverage ramp
    centres = (np.arange(res, dtype=np.float32) + 0.5) * px  # pixel-centre grid

    _, colour, _, _, _, background, texture = row.factors
    gx, gy = row.gradient
    ramp_x = (255 * gx) * (centres - 0.5)
    ramp_y = (255 * gy) * (centres - 0.5)
    image = BACKGROUNDS[background][:, None, None] + (ramp_y[:, None] + ramp_x[None, :])[None]
    np.clip(image, 0, 255, out=image)

    # Bounding box of the shape in pixels, one pixel wider than r for the ramp.
    extent = row.r + px
    x0, x1 = max(0, int((row.cx - extent) * res)), min(res, int(math.ceil((row.cx + extent) * res)))
    y0, y1 = max(0, int((row.cy - extent) * res)), min(res, int(math.ceil((row.cy + extent) * res)))
    dx = (centres[x0:x1] - row.cx)[None, :]
    dy = (row.cy - centres[y0:y1])[:, None]  # flip so shape-local y points up
    c, s = math.cos(row.angle), math.sin(row.angle)
    qx = c * dx + s * dy  # rotate the grid by -angle, i.e. the shape by +angle
    qy = c * dy - s * dx

    alpha = np.clip(0.5 - _sdf(row.shape, qx, qy, row.r) / px, 0.0, 1.0)
    dark = _texture(texture, qx + row.phase[0], qy + row.phase[1], px)
    fill = COLOURS[colour][:, None, None] * (1.0 - TEXTURE_DARKEN * dark)
    box = (slice(y0, y1), slice(x0, x1))
    region = image[:, box[0], box[1]]
    region += alpha * (fill - region)  # composite over the background, in place
    return image, alpha.astype(np.float32, copy=False), box


class ShapesSource(ImageSource):
    """`num_images` procedural shape images at `resolution`; see the module docstring."""

    num_classes = NUM_CLASSES
    class_names = list(CLASS_NAMES)
    attribute_names = ATTRIBUTE_NAMES
    factor_names: tuple[str, ...] = tuple(FACTORS)

    def __init__(self, num_images: int, resolution: int, seed: int = 0):
        num_images, resolution, seed = operator.index(num_images), operator.index(resolution), operator.index(seed)
        if resolution < MIN_RESOLUTION:
            raise ValueError(f"shapes needs resolution >= {MIN_RESOLUTION}, got {resolution}")
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seeds are non-negative), got {seed}")
        self.num_images = num_images
        self.resolution = resolution
        self.seed = seed

    def __len__(self) -> int:
        return self.num_images

    def _check(self, index: int) -> int:
        index = operator.index(index)
        if not 0 <= index < self.num_images:
            raise IndexError(f"row {index} out of range for {self.num_images} shapes")
        return index

    def row(self, index: int) -> ShapeRow:
        """All parameters of row `index` (factors and nuisance), without rendering."""
        return draw_row(self.seed, self._check(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.row(index)
        image, _, _ = render(row, self.resolution)
        image += 0.5  # round half up on the cast below; values are already within [0, 255]
        return torch.from_numpy(image.astype(np.uint8)), row.shape

    def label(self, index: int) -> int:
        return self.row(index).shape

    def factors(self, index: int) -> dict[str, str]:
        """Factor name -> value name of row `index`, e.g. {'shape': 'circle', ...}."""
        return {name: FACTORS[name][v] for name, v in zip(FACTORS, self.row(index).factors)}

    def attributes(self, index: int) -> np.ndarray:
        """One-hot columns of ATTRIBUTE_NAMES (exactly one 1 per factor), uint8."""
        out = np.zeros(len(ATTRIBUTE_NAMES), dtype=np.uint8)
        out[_OFFSETS + np.array(self.row(index).factors)] = 1
        return out

    def attribute_matrix(self) -> np.ndarray:
        """(len(self), len(ATTRIBUTE_NAMES)) uint8: all rows' attributes, without rendering."""
        out = np.zeros((self.num_images, len(ATTRIBUTE_NAMES)), dtype=np.uint8)
        for i in range(self.num_images):
            out[i, _OFFSETS + np.array(draw_row(self.seed, i).factors)] = 1
        return out

    def split_codes(self) -> np.ndarray:
        """Rows are independent draws, so contiguous ranges make the splits: the first 80% train,
        the next 10% validation, the last 10% test (a bigger dataset keeps its own proportions)."""
        n = self.num_images
        codes = np.full(n, TEST, dtype=np.int8)
        codes[: (n * 8) // 10] = TRAIN
        codes[(n * 8) // 10 : (n * 9) // 10] = VAL
        return codes

    def coverage(self, index: int) -> np.ndarray:
        """Float32 (R, R) in [0, 1]: how much of each pixel the shape covers (a soft mask)."""
        _, alpha, box = render(self.row(index), self.resolution)
        out = np.zeros((self.resolution, self.resolution), dtype=np.float32)
        out[box] = alpha
        return out

    def row_id(self, index: int) -> str:
        # The seed is part of the identity: row 3 of seed 0 and of seed 7 are different images.
        return f"shapes/seed{self.seed}/{self._check(index)}"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "shapes",
            "seed": self.seed,
            "rows": self.num_images,
            "resolution": self.resolution,
            "version": VERSION,
        }


def build(spec, *, resolution: int = 256, num_images: int | None = None, seed: int = 0, **_ignored) -> ShapesSource:
    """Factory for the dataset registry (`DatasetSpec.factory`)."""
    return ShapesSource(10_000 if num_images is None else num_images, resolution, seed)
