"""`csv`: any images with binary attributes, listed in a CSV file (`--root list.csv`, or DATA list.csv).

The file is UTF-8 with a header row. Columns, by header name (case-insensitive):

    path        the image, relative to the CSV file's folder (absolute paths work too);
                `image` or `file` when there is no `path` column (the first of them found)
    split       optional: train, val or test (validation and valid also mean val)
    label       optional: an integer class label per row (empty: no label)
    <any other> a binary attribute: 1/0, 1/-1, true/false or yes/no (case-insensitive)

Rows are the CSV's rows in order (blank lines skipped); row ids are the path column as written.
Every value is checked when the file is opened, so a bad one is reported with its line, column
and value before any work starts; the attribute matrix is therefore built at open (a CSV is
small next to CelebA's or DeepFashion's files).

Without a `split` column the split is seeded and fixed: with
`perm = numpy.random.default_rng([seed, 1234]).permutation(rows)`, rows perm[:8n//10] are train,
perm[8n//10:9n//10] val and the rest test (80/10/10). `describe()` records the rule and seed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from sendvae_cli.data.attribute_images import SPLIT_NAMES, AttributeImages
from sendvae_cli.data.source import NO_LABEL, TEST, TRAIN, VAL
from sendvae_cli.errors import UserError
from sendvae_cli.seeds import SPLIT_SALT, split_rng

PATH_COLUMNS = ("path", "image", "file")
VALUES = {"1": 1, "0": 0, "-1": 0, "true": 1, "false": 0, "yes": 1, "no": 0}


def seeded_split(rows: int, seed: int) -> np.ndarray:
    """The 80/10/10 split of a CSV without a split column (see the module docstring)."""
    order = split_rng(seed).permutation(rows)
    codes = np.full(rows, TEST, dtype=np.int8)
    codes[order[: rows * 8 // 10]] = TRAIN
    codes[order[rows * 8 // 10 : rows * 9 // 10]] = VAL
    return codes


class CsvAttributes(AttributeImages):
    """The images and attributes listed in a CSV file (see the module docstring)."""

    kind = "csv"

    def __init__(self, csv_file: str | os.PathLike, *, resolution: int = 256, num_images: int | None = None,
                 seed: int = 0, strict: bool = False, option: str = "--root"):
        prefix = f"{option} {csv_file}"
        path = Path(csv_file).expanduser()
        if path.is_dir():
            raise UserError(f"{prefix}: expected a CSV file, found a folder")
        if not path.is_file():
            raise UserError(f"{prefix}: no such file")
        path = path.resolve()
        if seed < 0:
            raise UserError(f"--seed {seed}: expected a number >= 0")
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                header, records = self._parse(csv.reader(f), path.name, prefix)
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise UserError(f"{prefix}: cannot read the file ({type(error).__name__}: {error})") from None
        paths, splits, labels, matrix = records
        self.has_split_column = splits is not None
        if splits is None:
            splits = seeded_split(len(paths), seed)
            rule = f"seeded 80/10/10: numpy.random.default_rng([{seed}, {SPLIT_SALT}]).permutation(rows)"
        else:
            rule = "column 'split' of the CSV file"
        self.seed = seed
        known = [int(v) for v in labels if v != NO_LABEL]
        self._all_attributes = matrix
        super().__init__(
            path.parent, paths, splits, header, self._read_attributes, resolution=resolution, labels=labels,
            annotations=(path,), num_images=num_images, strict=strict, prefix=prefix, split_rule=rule,
            num_classes=max(known) + 1 if known else None,
        )

    def _read_attributes(self, rows: np.ndarray) -> np.ndarray:
        return self._all_attributes[rows]

    @staticmethod
    def _parse(reader, name: str, prefix: str):
        """(attribute names, (paths, split codes or None, labels, attribute matrix)) of the CSV rows."""
        header, path_column, split_column, label_column, attributes = _columns(next(reader, None), prefix)

        paths: list[str] = []
        splits: list[int] = []
        labels: list[int] = []
        matrix: list[list[int]] = []
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) != len(header):
                raise UserError(f"{prefix}: line {line}: {len(row)} values, the header has {len(header)}")
            image = row[path_column].strip()
            if not image:
                raise UserError(f"{prefix}: line {line}: empty {header[path_column]!r}")
            paths.append(image)
            if split_column is not None:
                value = row[split_column].strip()
                if value.lower() not in SPLIT_NAMES:
                    raise UserError(f"{prefix}: line {line}, column {header[split_column]!r}: {value!r} is not "
                                    "train, val or test")
                splits.append(SPLIT_NAMES[value.lower()])
            if label_column is not None:
                value = row[label_column].strip()
                try:
                    labels.append(int(value) if value else NO_LABEL)
                except ValueError:
                    raise UserError(f"{prefix}: line {line}, column {header[label_column]!r}: {value!r} is not an "
                                    "integer label") from None
                if labels[-1] < NO_LABEL:
                    raise UserError(f"{prefix}: line {line}, column {header[label_column]!r}: {value!r}, expected "
                                    "a label >= 0")
            else:
                labels.append(NO_LABEL)
            out = []
            for column in attributes:
                value = row[column].strip()
                bit = VALUES.get(value.lower())
                if bit is None:
                    raise UserError(f"{prefix}: line {line}, column {header[column]!r}: {value!r} is not a binary "
                                    "value (1/0, 1/-1, true/false, yes/no)")
                out.append(bit)
            matrix.append(out)
        if not paths:
            raise UserError(f"{prefix}: no rows below the header")
        return [header[i] for i in attributes], (
            paths,
            np.array(splits, dtype=np.int8) if split_column is not None else None,
            np.array(labels, dtype=np.int64),
            np.array(matrix, dtype=np.uint8).reshape(len(paths), len(attributes)),
        )


def _columns(header: list[str] | None, prefix: str) -> tuple[list[str], int, int | None, int | None, list[int]]:
    """The header row's names and where the image, split, label and attribute columns are."""
    if not header:
        raise UserError(f"{prefix}: empty file, expected a header row")
    header = [h.strip() for h in header]
    lower = [h.lower() for h in header]
    duplicate = next((h for i, h in enumerate(lower) if h in lower[:i]), None)
    if duplicate is not None:
        raise UserError(f"{prefix}: column {duplicate!r} appears twice in the header")
    path_column = next((lower.index(c) for c in PATH_COLUMNS if c in lower), None)
    if path_column is None:
        raise UserError(f"{prefix}: no image column (expected a column named {', '.join(PATH_COLUMNS[:-1])} "
                        f"or {PATH_COLUMNS[-1]})")
    split_column = lower.index("split") if "split" in lower else None
    label_column = lower.index("label") if "label" in lower else None
    attributes = [i for i in range(len(header)) if i not in (path_column, split_column, label_column)]
    return header, path_column, split_column, label_column, attributes


def build(spec, *, root: str | os.PathLike | None = None, resolution: int = 256, num_images: int | None = None,
          seed: int = 0, strict: bool = False, option: str = "--root", **_ignored) -> CsvAttributes:
    """Factory for the dataset registry (`DatasetSpec.factory`): `root` is the CSV file."""
    if root is None:
        raise UserError("DATA csv: pass --root FILE.csv (or give the .csv file as DATA)")
    return CsvAttributes(root, resolution=resolution, num_images=num_images, seed=seed, strict=strict, option=option)
