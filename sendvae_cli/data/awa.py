"""`awa`: Animals with Attributes (AwA2, or AwA1 laid out the same way), 85 class-level attributes.

The official layout (https://cvml.ista.ac.at/AwA2/), which AwA2 unpacks into
Animals_with_Attributes2/ (also accepted: the root itself, or Animals_with_Attributes/):

    classes.txt                    `1\tantelope`: the 50 classes, numbered from 1
    predicates.txt                 `1\tblack`: the 85 attributes
    predicate-matrix-binary.txt    50 lines x 85 values 0/1 separated by spaces: class x attribute
    trainclasses.txt, testclasses.txt    one class name per line: the official 40/10 class split
    JPEGImages/<class>/<name>.jpg  the images, one folder per class

Attributes belong to classes, not images: every image has the attribute row of its class.
The label is the class index (0-based, in classes.txt order).

The split is the class split shipped with the dataset (the standard 40/10 split of Lampert et
al.; not the "proposed split" of Xian et al., which needs extra files):

    test   every image of the 10 classes in testclasses.txt. They are unseen classes, so a probe
           must predict attributes of animals it never saw; with class-level attributes, a probe
           tested on seen classes could score by recognising the class alone.
    val    of the 40 classes in trainclasses.txt, every 10th image of each class in sorted
           path order (index % 10 == 9 within its class);
    train  the other images of those 40 classes.

Rows are the image paths relative to the root, sorted. Every image of a class listed in
classes.txt is a row; a class in neither split file is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sendvae_cli.data.attribute_images import (
    AttributeImages,
    check_root,
    find_file,
    read_lines,
)
from sendvae_cli.data.folder import IMAGE_SUFFIXES
from sendvae_cli.data.source import TEST, TRAIN, VAL
from sendvae_cli.errors import UserError

LAYOUT = ("the Animals with Attributes layout: classes.txt, predicates.txt, predicate-matrix-binary.txt, "
          "trainclasses.txt, testclasses.txt, JPEGImages/<class>/")
WHERE = (".", "Animals_with_Attributes2", "Animals_with_Attributes")
VAL_EVERY = 10  # every 10th image of a training class (index % 10 == 9) is validation
SPLIT_RULE = ("official class split: testclasses.txt -> test (unseen classes); in trainclasses.txt classes, "
              "index % 10 == 9 in sorted path order within the class -> val, the rest -> train")


def _numbered(path: Path, prefix: str) -> list[str]:
    """Names of `<number> <name>` lines (classes.txt, predicates.txt), in file order."""
    out = []
    for number, line in enumerate(read_lines(path, prefix), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise UserError(f"{prefix}: {path.name} line {number}: expected '<number> <name>', found {line.strip()!r}")
        out.append(parts[1])
    return out


def _names(path: Path, classes: dict[str, int], prefix: str) -> set[str]:
    """The class names listed one per line in `path` (trainclasses.txt, testclasses.txt)."""
    out = set()
    for number, line in enumerate(read_lines(path, prefix), start=1):
        name = line.strip()
        if not name:
            continue
        if name not in classes:
            raise UserError(f"{prefix}: {path.name} line {number}: class {name!r} is not in classes.txt")
        out.add(name)
    return out


def _class_matrix(path: Path, shape: tuple[int, int], prefix: str) -> np.ndarray:
    """predicate-matrix-binary.txt as a (classes, attributes) uint8 array of 0/1."""
    rows = [line.split() for line in read_lines(path, prefix) if line.strip()]
    if len(rows) != shape[0] or any(len(r) != shape[1] for r in rows):
        found = f"{len(rows)} lines" + (f" of {sorted({len(r) for r in rows})} values" if rows else "")
        raise UserError(f"{prefix}: {path.name}: expected {shape[0]} lines of {shape[1]} values "
                        f"(classes x predicates), found {found}")
    values = {"0": 0, "1": 1}
    for number, row in enumerate(rows, start=1):
        bad = next((v for v in row if v not in values), None)
        if bad is not None:
            raise UserError(f"{prefix}: {path.name}: value {bad!r} in row {number}, expected 0 or 1")
    return np.array([[values[v] for v in row] for row in rows], dtype=np.uint8)


class AnimalsWithAttributes(AttributeImages):
    """AwA under `root` (see the module docstring); `num_images` as in `AttributeImages`."""

    kind = "awa"

    def __init__(self, root: str | os.PathLike, *, resolution: int = 256, num_images: int | None = None,
                 strict: bool = False, option: str = "--root"):
        prefix = f"{option} {root}"
        base = check_root(root, option)
        folder = find_file(base, "classes.txt", WHERE, LAYOUT, prefix).parent
        files = {name: find_file(folder, name, (".",), LAYOUT, prefix) for name in (
            "classes.txt", "predicates.txt", "predicate-matrix-binary.txt", "trainclasses.txt", "testclasses.txt")}
        image_dir = find_file(folder, "JPEGImages/", (".",), LAYOUT, prefix)

        classes = _numbered(files["classes.txt"], prefix)
        index = {name: i for i, name in enumerate(classes)}
        predicates = _numbered(files["predicates.txt"], prefix)
        matrix = _class_matrix(files["predicate-matrix-binary.txt"], (len(classes), len(predicates)), prefix)
        train = _names(files["trainclasses.txt"], index, prefix)
        test = _names(files["testclasses.txt"], index, prefix)
        both = sorted(train & test)
        if both:
            raise UserError(f"{prefix}: class {both[0]} is in both trainclasses.txt and testclasses.txt")
        neither = [name for name in classes if name not in train | test]
        if neither:
            raise UserError(f"{prefix}: class {neither[0]} is in neither trainclasses.txt nor testclasses.txt")

        rows: list[tuple[str, int, int]] = []  # (relative path, class, split)
        for name in classes:
            class_dir = image_dir / name
            if not class_dir.is_dir():
                raise UserError(f"{prefix}: missing {class_dir.relative_to(base).as_posix()}/ (expected {LAYOUT})")
            files_in_class = sorted(entry.name for entry in os.scandir(class_dir)
                                    if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES)
            relative = class_dir.relative_to(base).as_posix()
            for i, file_name in enumerate(files_in_class):
                split = TEST if name in test else VAL if i % VAL_EVERY == VAL_EVERY - 1 else TRAIN
                rows.append((f"{relative}/{file_name}", index[name], split))
        rows.sort()

        self._class_matrix = matrix
        self._all_labels = np.array([r[1] for r in rows], dtype=np.int64)
        super().__init__(
            base, [r[0] for r in rows], np.array([r[2] for r in rows], dtype=np.int8), predicates,
            self._read_attributes, resolution=resolution, labels=self._all_labels,
            annotations=list(files.values()), num_images=num_images, strict=strict, prefix=prefix,
            split_rule=SPLIT_RULE, num_classes=len(classes), class_names=classes,
        )
        self.test_classes = tuple(name for name in classes if name in test)

    def _read_attributes(self, rows: np.ndarray) -> np.ndarray:
        return self._class_matrix[self._all_labels[rows]]  # each image has its class's row


def build(spec, *, root: str | os.PathLike | None = None, resolution: int = 256, num_images: int | None = None,
          seed: int = 0, strict: bool = False, option: str = "--root", **_ignored) -> AnimalsWithAttributes:
    """Factory for the dataset registry (`DatasetSpec.factory`); `seed` is unused (the split is official)."""
    if root is None:
        raise UserError("DATA awa: this dataset lives on disk; pass --root PATH to its files")
    return AnimalsWithAttributes(root, resolution=resolution, num_images=num_images, strict=strict, option=option)
