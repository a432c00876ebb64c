"""Images as the toolkit holds them, and PNGs as it writes them.

Sources, caches and files hold uint8 [0, 255]; models see float [-1, 1]. Every conversion
between the two is here, each written once:

    to_model_range   uint8 (or whole levels) -> float32 [-1, 1]:  x / 127.5 - 1
    to_levels        [-1, 1] -> float64 whole levels [0, 255], what a saved PNG holds (the metrics
                     compare these, computed in float64 so a level is never off by a rounding)
    to_uint8         [-1, 1] NCHW -> uint8 NHWC numpy, computed in float32 (previews, samples)

`to_levels` and `to_uint8` round in different precisions and are kept apart: their outputs are
recorded in fixtures and sample files. torchvision's helpers are not used: `save_image` maps
[0, 1] by x * 255 + 0.5, which gives other bytes.

`save_png(image, path)` writes an (H, W, 3) uint8 array or a PIL image atomically
(`io.atomic_file`), a full disk as one line.

Torch-free at import: the functions take the tensors they are handed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sendvae_cli.io import atomic_file, remove_stale_temporaries, write_errors

if TYPE_CHECKING:
    import numpy as np
    import torch


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] (or float whole levels) -> float32 [-1, 1]; never changes `images`."""
    x = images.float()
    x = x.div_(127.5) if x is not images else x.div(127.5)  # in place only on a copy
    return x.sub_(1.0)


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> float64 whole levels in [0, 255] (what a saved uint8 PNG holds)."""
    return ((images.double() + 1.0) * 127.5).round_().clamp_(0.0, 255.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC numpy (rounded to the nearest level)."""
    import torch

    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_png(image: Any, path: Path) -> Path:
    """Write `image` ((H, W, 3) uint8 array or PIL image) as a PNG at `path`, atomically; the
    folder is created."""
    from PIL import Image

    path = Path(path)
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    with write_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)  # a killed writer's half-written PNG
    with atomic_file(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
