"""`celeba`: CelebA's aligned faces with their 40 binary attributes and the official split.

The official layout (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html):

    img_align_celeba/000001.jpg ...   202,599 aligned and cropped faces, JPEG 178x218
    list_attr_celeba.txt              line 1: the count; line 2: the 40 attribute names;
                                      then `000001.jpg -1  1 ...`, one value per attribute (-1/1)
    list_eval_partition.txt           `000001.jpg 0` per image: 0 train, 1 val, 2 test

The Google Drive copy nests them as Img/img_align_celeba/, Anno/list_attr_celeba.txt and
Eval/list_eval_partition.txt; torchvision's download keeps them flat in root/celeba/. Each file
is looked for in the root and in Anno/, Eval/, Img/ and celeba/ below it, so any of these
unpacked archives works as `--root`.

Rows follow the partition file (162,770 train, 19,867 val and 19,962 test images, in that
order); row ids are image paths relative to the root (`Img/img_align_celeba/000001.jpg` for the
Google Drive layout). There are no class labels. Attributes are 1 where the file says 1.
"""

from __future__ import annotations

import os

import numpy as np

from sendvae_cli.data.attribute_images import (
    AttributeImages,
    check_root,
    find_file,
    read_lines,
    read_sign_table,
)
from sendvae_cli.data.source import TEST, TRAIN, VAL
from sendvae_cli.errors import UserError

LAYOUT = "the official CelebA layout: img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt"
WHERE = (".", "Anno", "Eval", "Img", "celeba")
PARTITION_CODES = {"0": TRAIN, "1": VAL, "2": TEST}


class CelebA(AttributeImages):
    """CelebA under `root` (see the module docstring); `num_images` as in `AttributeImages`."""

    kind = "celeba"

    def __init__(self, root: str | os.PathLike, *, resolution: int = 256, num_images: int | None = None,
                 strict: bool = False, option: str = "--root"):
        prefix = f"{option} {root}"
        base = check_root(root, option)
        attr_file = find_file(base, "list_attr_celeba.txt", WHERE, LAYOUT, prefix)
        partition_file = find_file(base, "list_eval_partition.txt", WHERE, LAYOUT, prefix)
        image_dir = find_file(base, "img_align_celeba/", WHERE, LAYOUT, prefix)

        with open(attr_file, encoding="utf-8", errors="replace") as f:
            f.readline()  # the image count
            attribute_names = f.readline().split()
        if not attribute_names:
            raise UserError(f"{prefix}: {attr_file.name} line 2: expected the attribute names")

        names: list[str] = []
        splits: list[int] = []
        for number, line in enumerate(read_lines(partition_file, prefix), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in PARTITION_CODES:
                raise UserError(f"{prefix}: {partition_file.name} line {number}: expected "
                                f"'<image> 0|1|2', found {line.strip()!r}")
            names.append(parts[0])
            splits.append(PARTITION_CODES[parts[1]])

        folder = image_dir.relative_to(base).as_posix()
        self._attr_file, self._image_names = attr_file, names
        super().__init__(
            base, [f"{folder}/{name}" for name in names], np.array(splits, dtype=np.int8), attribute_names,
            self._read_attributes,
            resolution=resolution, annotations=(partition_file, attr_file), num_images=num_images, strict=strict,
            split_rule="official: list_eval_partition.txt (0 train, 1 val, 2 test)", prefix=prefix,
        )

    def _read_attributes(self, rows: np.ndarray) -> np.ndarray:
        names = [self._image_names[i] for i in rows]
        return read_sign_table(self._attr_file, names, len(self.attribute_names), header_lines=2, prefix=self.prefix)


def build(spec, *, root: str | os.PathLike | None = None, resolution: int = 256, num_images: int | None = None,
          seed: int = 0, strict: bool = False, option: str = "--root", **_ignored) -> CelebA:
    """Factory for the dataset registry (`DatasetSpec.factory`); `seed` is unused (the split is official)."""
    if root is None:
        raise UserError("DATA celeba: this dataset lives on disk; pass --root PATH to its files")
    return CelebA(root, resolution=resolution, num_images=num_images, strict=strict, option=option)
