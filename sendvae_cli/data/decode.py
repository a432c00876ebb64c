"""Any PIL image as 8-bit RGB, with each mode's real range.

PIL's own `convert("RGB")` clips high-bit-depth pixels instead of scaling them: a 16-bit grey
PNG (mode I;16 or I) becomes nearly all white, a float image (mode F) in [0, 1] nearly black.
Here they are scaled from the range their format stores:

- I;16 (and its byte orders) and I: 16-bit integers, 0..65535 maps to 0..255. Mode I is what
  16-bit PNG and TIFF files open as; a 32-bit image outside that range is clipped to it.
- F: floats in [0, 1] when every pixel lies there (the usual convention for float TIFFs),
  otherwise the 16-bit range when some pixel exceeds 255, otherwise 0..255.
- Modes with transparency (RGBA, LA, PA, RGBa, La, and palette or grey images carrying a
  transparency key) are composited over white, so transparent areas do not show whatever
  colour the file happens to store under them (often black).
- Everything else (1, L, P, RGB, CMYK, YCbCr, LAB, HSV) goes through PIL's conversion, which
  is exact for 8-bit modes. 16-bit RGB(A) PNGs already open as 8-bit RGB(A) in PIL, keeping
  each sample's high byte.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
WHITE = 255


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8), mode="L").convert("RGB")


def _scale(values: np.ndarray, top: float) -> np.ndarray:
    """Values in [0, top] as uint8 0..255, rounded; out-of-range values clipped."""
    return np.clip(np.rint(values.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _float_top(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    if finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0):
        return 1.0
    return 65535.0 if finite.max() > 255.0 else 255.0


def to_rgb8(image: Image.Image) -> Image.Image:
    """`image` as an 8-bit RGB PIL image (see the module docstring for each mode)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        return _grey_to_rgb(_scale(np.asarray(image), 65535.0))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        return _grey_to_rgb(_scale(values, _float_top(values)))
    if mode == "P" or (mode in ("L", "1", "RGB") and "transparency" in image.info):
        # A palette (or a grey image with a transparent value) says which pixels are clear only
        # through `transparency`; RGBA makes that an alpha channel.
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (WHITE, WHITE, WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
