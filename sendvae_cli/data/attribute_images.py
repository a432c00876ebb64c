"""Shared machinery of image datasets with binary attributes and a train/val/test split.

The readers of CelebA, DeepFashion, Animals with Attributes and attribute CSV files all come
down to the same thing: a root folder, a list of image paths relative to it, one split code per
row, optional integer labels, attribute names, and a matrix of 0/1 attributes. Each reader
parses its own annotation files into those and hands them to `AttributeImages`, which does
everything else the same way for all of them:

- images are decoded with PIL and prepared with ADM's centre crop (`adm_center_crop`), like a
  folder of images; an unreadable or missing file is a one-line UserError naming it;
- opening stays cheap: the attribute matrix (DeepFashion's file is ~600 MB of text) is parsed
  only on the first `attribute_matrix()` call, then cached; and only the first and last listed
  images are checked to exist (a stat of 200k files takes seconds), unless `strict=True`;
- `num_images=N` keeps a prefix of each split, sized so that the three splits keep their
  proportions (see `proportional_prefix`), so a small run still has train, val and test rows;
- `describe()` records the root, the split rule and the identity (name, size, sha256) of every
  annotation file read, so a cache made from the dataset says exactly what it was made from.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sendvae_cli.data.folder import adm_center_crop
from sendvae_cli.data.source import NO_LABEL, SPLITS, TEST, TRAIN, VAL, ImageSource
from sendvae_cli.errors import UserError

# When `num_images` is too small for a row in every split, train is served first, then test
# (a probe needs both to say anything), then val.
_SPLIT_PRIORITY = (TRAIN, TEST, VAL)


def check_root(root: str | os.PathLike, option: str = "--root") -> Path:
    """The dataset folder as an absolute path; a one-line error when it does not exist."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"{option} {root}: no such folder")
    return path.resolve()


def find_file(root: Path, name: str, where: Sequence[str], layout: str, prefix: str) -> Path:
    """The first of `root/<w>/<name>` (w in `where`, "." = root) that exists (a file or a folder).

    Official archives unpack into different nestings (CelebA's Google Drive copy has Anno/ and
    Eval/, torchvision's is flat), so each reader lists where its files may be; when none is
    found the error names the file and the layout the reader expected. `prefix` starts every
    message: the option and the root as the user wrote them (`--root /data/celeba`).
    """
    for sub in where:
        candidate = root / sub / name
        if candidate.exists():
            return candidate
    raise UserError(f"{prefix}: missing {name} (expected {layout})")


def read_lines(path: Path, prefix: str) -> list[str]:
    """The lines of a small text annotation file (UTF-8, any line ending), a UserError if unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{prefix}: cannot read {path.name} ({type(error).__name__}: {error})") from None


def proportional_prefix(splits: np.ndarray, num_images: int | None) -> np.ndarray:
    """Indices of the rows kept by `num_images`, in row order.

    Each split keeps its first rows. How many: `num_images` shared out in proportion to the
    splits' sizes (integer largest remainders, so the total is exactly `num_images`), then every
    non-empty split that got none takes one row from the largest share while `num_images`
    allows it. Ties, and splits when `num_images` is too small for all, go train, test, val.
    With `num_images` >= the number of rows, every row is kept.
    """
    n = len(splits)
    if num_images is None or num_images >= n:
        return np.arange(n)
    counts = np.bincount(splits.astype(np.int64), minlength=len(SPLITS))[: len(SPLITS)]
    share, remainder = np.divmod(num_images * counts, n)
    order = sorted(_SPLIT_PRIORITY, key=lambda s: -remainder[s])  # ties by priority
    share[order[: num_images - int(share.sum())]] += 1
    for s in _SPLIT_PRIORITY:
        donor = int(np.argmax(share))
        if counts[s] and not share[s] and share[donor] > 1:
            share[donor] -= 1
            share[s] = 1
    keep = [np.flatnonzero(splits == s)[: share[s]] for s in range(len(SPLITS))]
    return np.sort(np.concatenate(keep))


_NAME = re.compile(rb"\s*(\S+)")
_WHITESPACE = b" \t\r\n\v\f"
_BATCH_LINES = 8192  # fast-path rows gathered before one numpy conversion (bounds memory)


def _fixed_width_values(line: bytes, name: bytes, width: int) -> bytes | None:
    """The last `width` bytes of `line` when it is laid out as the official files are (the name,
    then values two characters wide, `-1`, ` 1` or ` 0`, one separator apart); else None."""
    region = line[-width:]
    if (len(line) > width and line[:-width].strip() == name
            and not region[2::3].translate(None, b" \t") and not region[0::3].translate(None, b" -")
            and not region[1::3].translate(None, b"01")):
        return region
    return None


def _token_values(rest: bytes, num_columns: int, fail) -> np.ndarray:
    """The values after the image name with any spacing: '-1' -> '0', whitespace dropped, one byte
    per value remains; `fail(problem)` makes the error."""
    values = rest.replace(b"-1", b"0").translate(None, _WHITESPACE)
    if len(values) != num_columns:
        raise fail(f"expected {num_columns} values after the image name, found {len(rest.split())}")
    if values.translate(None, b"01"):
        raise fail("a value other than -1, 0 and 1")
    return np.frombuffer(values, dtype=np.uint8) - ord("0")


def read_sign_table(path: Path, names: Sequence[str], num_columns: int, *, header_lines: int,
                    prefix: str) -> np.ndarray:
    """Rows `names` of a table `image_name v1 v2 ...` with values in {-1, 0, 1}: (len(names), num_columns) uint8.

    1 stays 1; -1 and 0 become 0. The file may list other images too (skipped), in any order.
    DeepFashion's file holds 289M values, so no value becomes a Python object. The official files are fixed-width (every value is two characters, `-1`, ` 1` or
    ` 0`, one separator apart), so a line's values are the last 3*num_columns-1 bytes: strided
    byte slices give the signs and digits, checked with C-level `translate`, and numpy turns a
    batch of lines into rows at once. A line that is not laid out like that is parsed token by
    token with bytes methods instead (same result, slower).
    """
    where = {name.encode("utf-8"): i for i, name in enumerate(names)}
    out = np.zeros((len(names), num_columns), dtype=np.uint8)
    filled = np.zeros(len(names), dtype=bool)
    width = 3 * num_columns - 1
    rows: list[int] = []
    signs: list[bytes] = []
    digits: list[bytes] = []

    def flush() -> None:
        if rows:
            sign = np.frombuffer(b"".join(signs), dtype=np.uint8).reshape(len(rows), num_columns)
            digit = np.frombuffer(b"".join(digits), dtype=np.uint8).reshape(len(rows), num_columns)
            out[rows] = (digit == ord("1")) & (sign != ord("-"))
            for pending in (rows, signs, digits):
                pending.clear()

    def fail(number: int, problem: str) -> UserError:
        return UserError(f"{prefix}: {path.name} line {number}: {problem}")

    try:
        with open(path, "rb") as f:
            for _ in range(header_lines):
                f.readline()
            for number, line in enumerate(f, start=header_lines + 1):
                line = line.rstrip()
                match = _NAME.match(line)
                if match is None:
                    continue  # a blank line
                i = where.get(match.group(1))
                if i is None:
                    continue
                filled[i] = True
                region = _fixed_width_values(line, match.group(1), width)
                if region is not None:
                    rows.append(i)
                    signs.append(region[0::3])
                    digits.append(region[1::3])
                    if len(rows) >= _BATCH_LINES:
                        flush()
                    continue
                out[i] = _token_values(line[match.end():], num_columns, lambda problem: fail(number, problem))
            flush()
    except OSError as error:
        raise UserError(f"{prefix}: cannot read {path.name} ({type(error).__name__}: {error})") from None
    if not filled.all():
        raise UserError(f"{prefix}: {path.name} has no row for image {names[int(np.argmin(filled))]}")
    return out


class AttributeImages(ImageSource):
    """Images listed by annotation files, with binary attributes and a train/val/test split.

    Subclasses only parse their annotation files. Arguments, all for the full dataset before
    `num_images` is applied:

    root: the dataset folder (`--root`); row ids are image paths relative to it.
    paths: image paths relative to `root` (posix; an absolute path is used as is).
    splits: TRAIN/VAL/TEST per row.
    attribute_names: one name per attribute column.
    load_attributes: called once, on the first `attribute_matrix()`, with the indices of the
        kept rows; returns their (len(rows), len(attribute_names)) 0/1 matrix. Readers pass a
        bound method, so a source still pickles (DataLoader workers under spawn).
    labels: integer label per row (None: every row NO_LABEL).
    annotations: the annotation files read, for `describe()`.
    split_rule: how the split was made, in words, for `describe()`.
    num_images: keep only a proportional prefix of each split (see `proportional_prefix`): each
        split keeps its first rows, so train:val:test stays as in the full dataset and the
        total is exactly `num_images`; row order is otherwise unchanged.
    strict: check at open that every kept image exists (otherwise only the first and the last;
        a missing image is an error naming it when it is decoded).
    prefix: how messages start, the option and root as the user wrote them (`--root /x`).
    """

    kind = "attribute-images"

    def __init__(self, root: Path, paths: Sequence[str], splits: np.ndarray, attribute_names: Sequence[str],
                 load_attributes: Callable[[np.ndarray], np.ndarray], *, resolution: int,
                 labels: Sequence[int] | np.ndarray | None = None, annotations: Sequence[Path] = (),
                 split_rule: str = "", num_images: int | None = None, strict: bool = False,
                 prefix: str | None = None, num_classes: int | None = None, class_names: Sequence[str] | None = None):
        resolution = operator.index(resolution)
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if num_images is not None and operator.index(num_images) < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.root = Path(root)
        self.prefix = prefix if prefix is not None else f"--root {root}"
        self.resolution = resolution
        self.attribute_names = tuple(attribute_names)
        self.annotations = tuple(Path(a) for a in annotations)
        self.split_rule = split_rule
        self.requested = num_images
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        splits = np.asarray(splits, dtype=np.int8)
        if len(splits) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(splits)} split codes")
        if not len(paths):
            raise UserError(f"{self.prefix}: the annotations list no images")
        self.total_rows = len(paths)
        self.keep = proportional_prefix(splits, num_images)
        self.paths = [paths[i] for i in self.keep]
        self.splits = splits[self.keep]
        full_labels = np.full(len(paths), NO_LABEL, dtype=np.int64) if labels is None else np.asarray(labels, np.int64)
        self.labels = full_labels[self.keep]
        self._load_attributes = load_attributes
        self._matrix: np.ndarray | None = None
        self._identities: list[dict[str, Any]] | None = None
        self._check_exists(range(len(self.paths)) if strict else sorted({0, len(self.paths) - 1}))

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers need images, not the (up to 289 MB) attribute matrix.
        return dict(self.__dict__, _matrix=None)

    # -- files ---------------------------------------------------------------------------
    def path(self, index: int) -> Path:
        return self.root / self.paths[index]

    def _missing(self, index: int) -> UserError:
        listed = f" (listed in {self.annotations[0].name})" if self.annotations else ""
        return UserError(f"{self.prefix}: missing image {self.paths[index]}{listed}")

    def _check_exists(self, indices) -> None:
        for i in indices:
            if len(self.paths) and not self.path(i).is_file():
                raise self._missing(i)

    # -- ImageSource ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = operator.index(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"row {index} out of range for {len(self.paths)} images")
        path = self.path(index)
        try:
            with Image.open(path) as image:
                pixels = adm_center_crop(image, self.resolution)
        except FileNotFoundError:
            raise self._missing(index) from None
        except Exception as error:  # noqa: BLE001 - truncated data only shows when decoding
            raise UserError(f"{self.prefix}: cannot decode image {self.paths[index]} "
                            f"({type(error).__name__}: {error})") from None
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).contiguous(), int(self.labels[index])

    def row_id(self, index: int) -> str:
        return self.paths[index]

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def attribute_matrix(self) -> np.ndarray:
        """(len(self), len(attribute_names)) uint8 0/1, parsed on the first call and cached."""
        if self._matrix is None:
            matrix = np.ascontiguousarray(self._load_attributes(self.keep), dtype=np.uint8)
            expected = (len(self.paths), len(self.attribute_names))
            if matrix.shape != expected:  # a reader bug, not a user error
                raise RuntimeError(f"{type(self).__name__}: attribute matrix {matrix.shape}, expected {expected}")
            self._matrix = matrix
        return self._matrix

    def attributes(self, index: int) -> np.ndarray:
        return self.attribute_matrix()[index]

    def split_codes(self) -> np.ndarray:
        return self.splits.copy()

    def split_counts(self) -> dict[str, int]:
        counts = np.bincount(self.splits, minlength=len(SPLITS))
        return {name: int(counts[s]) for s, name in enumerate(SPLITS)}

    def annotation_identities(self) -> list[dict[str, Any]]:
        """Name (relative to the root), size and sha256 of each annotation file; hashed once."""
        if self._identities is None:
            from sendvae_cli.provenance import file_sha256

            out = []
            for path in self.annotations:
                try:
                    name = path.relative_to(self.root).as_posix()
                except ValueError:
                    name = path.name
                out.append({"name": name, "bytes": path.stat().st_size, "sha256": file_sha256(path)})
            self._identities = out
        return self._identities

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "root": str(self.root),
            "rows": len(self),
            "total_rows": self.total_rows,
            "num_images": self.requested,
            "resolution": self.resolution,
            "split": self.split_rule,
            "split_counts": self.split_counts(),
            "attributes": len(self.attribute_names),
            "classes": self.num_classes,
            "annotations": self.annotation_identities(),
        }


# Split codes by name, as the annotation files of DeepFashion and CSV files write them.
SPLIT_NAMES = {"train": TRAIN, "val": VAL, "validation": VAL, "valid": VAL, "test": TEST}
