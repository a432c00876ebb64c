"""An ADM-style `.npz` written image by image: 50,000 samples never sit in memory at once.

The file is what `np.savez(path, images, labels)` would write (an uncompressed zip holding `arr_0.npy`,
uint8 N x H x W x 3, and `arr_1.npy`, the int64 labels, as ADM's sampler writes them), except that the
image member is streamed: the .npy header first, then each image's bytes. Members carry a fixed
timestamp, so the same images give the same bytes. ZIP64 records allow files over 4 GiB.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from sendvae_cli.io import atomic_file

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def write_npz(path: Path, images: Iterable[np.ndarray], count: int, height: int, width: int,
              labels: np.ndarray | None = None) -> Path:
    """Stream `count` uint8 (H, W, 3) images into PATH (via a temporary name, then renamed: `io.atomic_file`)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        _write_images(tmp, images, count, height, width, labels)
    return path


def _write_images(tmp: Path, images: Iterable[np.ndarray], count: int, height: int, width: int,
                  labels: np.ndarray | None) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (count, height, width, 3)}
    written = 0
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open(_member("arr_0.npy"), "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            for image in images:
                if image.shape != (height, width, 3) or image.dtype != np.uint8:
                    raise ValueError(f"image {written}: {image.dtype} {image.shape}, expected uint8 {(height, width, 3)}")
                member.write(np.ascontiguousarray(image).tobytes())
                written += 1
        if written != count:
            raise ValueError(f"{written} images written, {count} announced")
        if labels is not None:
            with archive.open(_member("arr_1.npy"), "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(labels, dtype=np.int64), allow_pickle=False)
