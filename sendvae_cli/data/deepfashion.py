"""`deepfashion`: DeepFashion's Category and Attribute Prediction Benchmark, 1000 binary attributes.

The official layout (https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/AttributePrediction.html):

    img/<item>/img_00000001.jpg ...  289,222 clothing images (also accepted under Img/img/)
    Anno/list_attr_cloth.txt         line 1: 1000; line 2: `attribute_name  attribute_type`; then
                                     one attribute per line: a name, which may contain spaces
                                     ("a-line dress"), then its type 1-5
    Anno/list_attr_img.txt           line 1: the count; line 2: `image_name  attribute_labels`;
                                     then `img/<item>/img_00000001.jpg -1 -1  1 ...` (1000 values)
    Eval/list_eval_partition.txt     line 1: the count; line 2: `image_name  evaluation_status`;
                                     then `img/... train|val|test`
    Anno/list_category_img.txt       optional: `img/... <category 1-50>`, the class label
    Anno/list_category_cloth.txt     optional: the 50 category names

Annotation files are also found in Anno_coarse/ (the 2020 re-release) and in the root itself.
Attribute types name what an attribute describes: 1 texture, 2 fabric, 3 shape, 4 part,
5 style; `DeepFashion.attribute_types` holds one per attribute. An attribute is 1 where the
file says 1 (-1 and, in later releases, 0 mean absent).

Rows follow the partition file; each is matched to its attribute row by image name, which is
why the 600 MB attribute file is only parsed when the matrix is first asked for. Labels are
category - 1 when list_category_img.txt is present, else -1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from sendvae_cli.data.attribute_images import (
    SPLIT_NAMES,
    AttributeImages,
    check_root,
    find_file,
    read_lines,
    read_sign_table,
)
from sendvae_cli.data.source import NO_LABEL
from sendvae_cli.errors import UserError

LAYOUT = ("the DeepFashion Category and Attribute Prediction layout: img/, Anno/list_attr_cloth.txt, "
          "Anno/list_attr_img.txt, Eval/list_eval_partition.txt")
ANNO = ("Anno", "Anno_coarse", ".")
EVAL = ("Eval", ".")
ATTRIBUTE_TYPES = {1: "texture", 2: "fabric", 3: "shape", 4: "part", 5: "style"}
NUM_CATEGORIES = 50


def _records(path: Path, prefix: str) -> list[tuple[int, str, str]]:
    """(line number, first field, last field) of each line after the count and header lines.

    The first field is everything but the last whitespace-separated token, stripped, so that
    attribute and category names with spaces stay whole.
    """
    lines = read_lines(path, prefix)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise UserError(f"{prefix}: {path.name}: expected a count on line 1 and a header on line 2")
    out = []
    for number, line in enumerate(lines[2:], start=3):
        parts = line.rsplit(None, 1)
        if not parts:
            continue
        if len(parts) != 2:
            raise UserError(f"{prefix}: {path.name} line {number}: expected '<name> <value>', found {line.strip()!r}")
        out.append((number, parts[0].strip(), parts[1]))
    return out


class DeepFashion(AttributeImages):
    """DeepFashion under `root` (see the module docstring); `num_images` as in `AttributeImages`."""

    kind = "deepfashion"

    def __init__(self, root: str | os.PathLike, *, resolution: int = 256, num_images: int | None = None,
                 strict: bool = False, option: str = "--root"):
        prefix = f"{option} {root}"
        base = check_root(root, option)
        cloth_file = find_file(base, "list_attr_cloth.txt", ANNO, LAYOUT, prefix)
        attr_file = find_file(base, "list_attr_img.txt", ANNO, LAYOUT, prefix)
        partition_file = find_file(base, "list_eval_partition.txt", EVAL, LAYOUT, prefix)
        image_dir = find_file(base, "img/", (".", "Img"), LAYOUT, prefix)

        names, types = [], []
        for number, name, kind in _records(cloth_file, prefix):
            if not kind.isdigit() or int(kind) not in ATTRIBUTE_TYPES:
                raise UserError(f"{prefix}: {cloth_file.name} line {number}: attribute type {kind!r}, expected 1-5")
            names.append(name)
            types.append(ATTRIBUTE_TYPES[int(kind)])
        self.attribute_types: tuple[str, ...] = tuple(types)

        images, splits = [], []
        for number, image, status in _records(partition_file, prefix):
            if status not in ("train", "val", "test"):
                raise UserError(f"{prefix}: {partition_file.name} line {number}: evaluation status {status!r}, "
                                "expected train, val or test")
            images.append(image)
            splits.append(SPLIT_NAMES[status])

        # The listed names start with img/; the Img/ wrapper of some copies goes in front.
        parent = image_dir.parent.relative_to(base).as_posix()
        paths = images if parent == "." else [f"{parent}/{image}" for image in images]

        annotations = [partition_file, attr_file, cloth_file]
        labels, num_classes, class_names = None, None, None
        category_dir = (base / "Anno", base / "Anno_coarse", base)
        category_file = next((d / "list_category_img.txt" for d in category_dir
                              if (d / "list_category_img.txt").is_file()), None)
        if category_file is not None:
            category = {}
            for number, image, value in _records(category_file, prefix):
                if not value.isdigit() or not 1 <= int(value) <= NUM_CATEGORIES:
                    raise UserError(f"{prefix}: {category_file.name} line {number}: category {value!r}, "
                                    f"expected 1-{NUM_CATEGORIES}")
                category[image] = int(value) - 1
            labels = [category.get(image, NO_LABEL) for image in images]
            num_classes = NUM_CATEGORIES
            annotations.append(category_file)
            names_file = category_file.with_name("list_category_cloth.txt")
            if names_file.is_file():
                class_names = [name for _, name, _ in _records(names_file, prefix)]
                if len(class_names) != NUM_CATEGORIES:
                    raise UserError(f"{prefix}: {names_file.name}: {len(class_names)} categories, "
                                    f"expected {NUM_CATEGORIES}")
                annotations.append(names_file)

        self._attr_file, self._image_names = attr_file, images
        super().__init__(
            base, paths, np.array(splits, dtype=np.int8), names, self._read_attributes, resolution=resolution,
            labels=labels,
            annotations=annotations, num_images=num_images, strict=strict, prefix=prefix,
            split_rule="official: Eval/list_eval_partition.txt (train, val, test)",
            num_classes=num_classes, class_names=class_names,
        )

    def _read_attributes(self, rows: np.ndarray) -> np.ndarray:
        names = [self._image_names[i] for i in rows]
        return read_sign_table(self._attr_file, names, len(self.attribute_names), header_lines=2, prefix=self.prefix)

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), attribute_types={t: self.attribute_types.count(t)
                                                         for t in ATTRIBUTE_TYPES.values()})


def build(spec, *, root: str | os.PathLike | None = None, resolution: int = 256, num_images: int | None = None,
          seed: int = 0, strict: bool = False, option: str = "--root", **_ignored) -> DeepFashion:
    """Factory for the dataset registry (`DatasetSpec.factory`); `seed` is unused (the split is official)."""
    if root is None:
        raise UserError("DATA deepfashion: this dataset lives on disk; pass --root PATH to its files")
    return DeepFashion(root, resolution=resolution, num_images=num_images, strict=strict, option=option)
