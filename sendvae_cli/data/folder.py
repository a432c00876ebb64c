"""A folder of images as a dataset: class sub-folders give labels, a flat folder is unlabelled.

Rows are the image files in sorted relative-path order. Every file is checked once (PIL opens
it and verifies its structure, in threads) and the verdict is kept in a folder index
(data/folder_index.py), so later commands on an unchanged folder open nothing before they
start; unreadable files are skipped and reported together, or refused with `strict=True`.
Damage that only shows when the pixels are decoded is reported, naming the file, at read time.
Images are resized and centre cropped the way ADM (guided-diffusion) prepares ImageNet: halve
with a box filter while the short side is at least twice the target, resize the short side to
the target with bicubic, then crop the centre.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sendvae_cli.data.decode import to_rgb8
from sendvae_cli.data.folder_index import IMAGE_SUFFIXES, index_folder, row_order, scan
from sendvae_cli.data.source import NO_LABEL, ImageSource
from sendvae_cli.errors import UserError


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop: (size, size, 3) uint8 from a PIL image of any size and mode."""
    image = to_rgb8(image)
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top = (pixels.shape[0] - size) // 2
    left = (pixels.shape[1] - size) // 2
    return pixels[top : top + size, left : left + size]


def list_images(root: Path, option: str) -> list[Path]:
    """Every image file below `root`, sorted; one-line errors for a missing or image-less folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{option} {root}: no such folder")
    files = [root / p for p in sorted(scan(root), key=row_order)]
    if not files:
        raise UserError(f"{option} {root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


class ImageFolder(ImageSource):
    def __init__(self, root: str | os.PathLike, resolution: int, *, strict: bool = False, workers: int = 8):
        self.root = Path(root).expanduser().resolve()
        self.resolution = int(resolution)
        if not self.root.is_dir():
            raise UserError(f"DATA {root}: no such folder")
        index = index_folder(self.root, workers)
        self.index_location, self.verified = index.location, index.verified
        self.skipped = index.skipped
        if not index.paths and not index.skipped:
            raise UserError(f"DATA {root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        if self.skipped and strict:
            path, reason = self.skipped[0]
            raise UserError(f"DATA {root}: unreadable image {path} ({reason}); {len(self.skipped)} in all (--strict)")
        self.paths = index.paths
        if not self.paths:
            raise UserError(f"DATA {root}: none of the {len(self.skipped)} images could be read")

        # Labelled when every image sits inside a first-level sub-folder (ImageNet layout).
        tops = [p.split("/", 1)[0] if "/" in p else None for p in self.paths]
        if all(t is not None for t in tops):
            self.class_names = sorted(set(tops))
            index = {name: i for i, name in enumerate(self.class_names)}
            self.labels = [index[t] for t in tops]
            self.num_classes = len(self.class_names)
        else:
            self.class_names = None
            self.num_classes = None
            self.labels = [NO_LABEL] * len(self.paths)

    def skipped_summary(self, shown: int = 3) -> str | None:
        if not self.skipped:
            return None
        names = ", ".join(p for p, _ in self.skipped[:shown])
        more = f" and {len(self.skipped) - shown} more" if len(self.skipped) > shown else ""
        return f"skipped {len(self.skipped)} unreadable image(s) in {self.root}: {names}{more}"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as image:
                pixels = adm_center_crop(image, self.resolution)
        except Exception as error:  # noqa: BLE001 - truncated data only shows when decoding
            raise UserError(f"DATA {path}: cannot decode image ({type(error).__name__}: {error})") from None
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).contiguous(), self.labels[index]

    def row_id(self, index: int) -> str:
        return self.paths[index]

    def label(self, index: int) -> int:
        return self.labels[index]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "folder",
            "root": str(self.root),
            "rows": len(self),
            "resolution": self.resolution,
            "classes": self.num_classes,
            "skipped": len(self.skipped),
        }
