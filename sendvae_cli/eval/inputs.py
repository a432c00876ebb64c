"""What `sendvae fid` reads: image folders, ADM `.npz` batches, and saved statistics.

Images
- A folder: every image file below it (recursively, sorted by relative path: name samples
  000000.png, 000001.png, ... so that the order is the sampling order). All must have one size;
  each is decoded by torch-fidelity's `ImagesPathDataset` (PIL, converted to RGB, uint8) in
  DataLoader workers. Sizes are checked from the file headers before any model runs.
- An ADM batch `.npz`: `arr_0` uint8 (N, H, W, 3). Read without loading it whole: an uncompressed
  member (what `np.savez` and the sampler write) is memory-mapped at its offset inside the zip;
  a compressed one is streamed batch by batch through zipfile.

Reference (`--ref`)
- a folder or an `.npz` holding only `arr_0`: statistics are computed from the images;
- an ADM reference batch: `mu`, `sigma` (pool_3) and `mu_s`, `sigma_s` (spatial) in float64 are
  used as they are; its `arr_0` images (10,000 in ADM's batches) give precision/recall features;
- statistics written by `--save-stats` (or the cache): `mu`, `sigma`, `mu_s`, `sigma_s`, the pool
  features `features` (float32) for precision/recall, and `sendvae_fid`, a JSON string with the
  producer, the extractor (`inception` when absent: files from before extractors were
  selectable), its weights' sha256 and the counts. With a teacher extractor `mu`, `sigma` and
  `features` are in its space (its width) and there are no `mu_s`, `sigma_s`.

Statistics computed from a folder or an `.npz` of images are cached under
`$SENDVAE_CACHE/fid` (default `~/.cache/sendvae/fid`), keyed by the sha256 of the images' bytes
(and relative paths), the extractor and its weights, and the protocol version, so a reference is
featurised once however often it is used.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
import json
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from sendvae_cli.data.folder import list_images
from sendvae_cli.errors import UserError
from sendvae_cli.eval.frechet import Gaussian
from sendvae_cli.eval.inception import POOL_DIM, SPATIAL_DIM
from sendvae_cli.io import atomic_file, remove_stale_temporaries
from sendvae_cli.provenance import file_sha256

STATS_FORMAT = "sendvae-fid-stats"
STATS_VERSION = 1
PROTOCOL_VERSION = 1  # bump when features or statistics change: cached statistics are keyed by it
STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
INCEPTION = "inception"  # the extractor of statistics files that do not name one


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def one_line(error: BaseException) -> str:
    """`Type: first line of the message` (some libraries write paragraphs)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class ImageInput(ABC):
    """N uint8 RGB images of one size, delivered in order as (B, 3, H, W) tensors."""

    path: Path
    option: str  # how the user named it (SAMPLES, --ref): the start of every error line
    kind: str
    count: int
    height: int
    width: int

    @abstractmethod
    def batches(self, batch_size: int, limit: int | None = None, workers: int = 0,
                share: tuple[int, int] = (0, 1)) -> Iterator[torch.Tensor]:
        """The images in order, `batch_size` at a time (the first `limit` of them). With `share`
        (rank, world) only batches k with k % world == rank: one process's part of the pass."""

    @abstractmethod
    def content_sha256(self, workers: int = 8) -> str:
        """A digest of the pixels and their order (what a cached feature file is keyed by)."""

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "images": self.count,
                "image_size": [self.height, self.width]}


def _header(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    try:
        with Image.open(path) as image:
            return image.size, None
    except Exception as error:  # noqa: BLE001 - reported as one line
        return None, one_line(error)


class _Decode(torch.utils.data.Dataset):
    """torch-fidelity's ImagesPathDataset, with decode failures reported instead of raised in a worker."""

    def __init__(self, files: list[Path], height: int, width: int):
        from torch_fidelity.datasets import ImagesPathDataset

        self.inner = ImagesPathDataset([str(f) for f in files])
        self.height, self.width = height, width

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        try:
            image = self.inner[index]
            if tuple(image.shape) != (3, self.height, self.width):
                return torch.zeros(3, self.height, self.width, dtype=torch.uint8), f"size {tuple(image.shape[1:])}"
            return image, ""
        except Exception as error:  # noqa: BLE001 - the main process raises it as a UserError
            return torch.zeros(3, self.height, self.width, dtype=torch.uint8), one_line(error)


class FolderImages(ImageInput):
    kind = "folder"

    def __init__(self, root: Path | str, option: str, workers: int = 8):
        self.path = Path(root).expanduser()
        self.option = option
        files = list_images(self.path, option)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            headers = list(pool.map(_header, files))
        for file, (size, reason) in zip(files, headers):
            if reason is not None:
                raise UserError(f"{option} {root}: unreadable image {file.relative_to(self.path)} ({reason})")
        sizes: dict[tuple[int, int], list[Path]] = {}
        for file, (size, _) in zip(files, headers):
            sizes.setdefault(size, []).append(file)
        if len(sizes) > 1:
            common = max(sizes, key=lambda s: len(sizes[s]))
            odd = next(f for f, (s, _) in zip(files, headers) if s != common)
            shown = ", ".join(f"{w}x{h} ({len(v)})" for (w, h), v in sorted(sizes.items(), key=lambda kv: -len(kv[1]))[:4])
            raise UserError(f"{option} {root}: images of different sizes ({shown}), e.g. {odd.relative_to(self.path)}; "
                            f"resize them to one size first")
        (self.width, self.height), = sizes.keys()
        self.files = files
        self.count = len(files)

    def batches(self, batch_size: int, limit: int | None = None, workers: int = 0,
                share: tuple[int, int] = (0, 1)) -> Iterator[torch.Tensor]:
        from sendvae_cli.stopping import ignore_stop_signals

        files = self.files[: limit or self.count]
        rank, world = share
        mine = [list(range(start, min(start + batch_size, len(files))))
                for start in range(rank * batch_size, len(files), world * batch_size)]
        loader = torch.utils.data.DataLoader(_Decode(files, self.height, self.width), batch_sampler=mine,
                                             num_workers=workers, pin_memory=torch.cuda.is_available(),
                                             persistent_workers=False, worker_init_fn=ignore_stop_signals)
        for indices, (images, problems) in zip(mine, loader):
            for index, problem in zip(indices, problems):
                if problem:
                    name = files[index].relative_to(self.path)
                    raise UserError(f"{self.option} {self.path}: cannot decode image {name} ({problem})")
            yield images

    def content_sha256(self, workers: int = 8) -> str:
        total = hashlib.sha256(b"folder\n")
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for file, d in zip(self.files, pool.map(file_sha256, self.files)):
                total.update(file.relative_to(self.path).as_posix().encode("utf-8") + b"\0" + bytes.fromhex(d))
        return total.hexdigest()


def _npz_member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    try:
        return archive.getinfo(f"{name}.npy")
    except KeyError:
        return None


def _read_npy_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    return np.lib.format.read_array_header_2_0(stream)


class NpzImages(ImageInput):
    kind = "npz"

    def __init__(self, path: Path | str, option: str):
        self.path = Path(path).expanduser()
        self.option = option
        self.offset: int | None = None
        try:
            with zipfile.ZipFile(self.path) as archive:
                info = _npz_member(archive, "arr_0")
                if info is None:
                    raise UserError(f"{option} {path}: no arr_0 (images) in this .npz")
                with archive.open(info) as stream:
                    shape, fortran, dtype = _read_npy_header(stream)
                    header_bytes = stream.tell()
                if info.compress_type == zipfile.ZIP_STORED:
                    self.offset = self._data_offset(info) + header_bytes
        except UserError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise UserError(f"{option} {path}: not a readable .npz ({one_line(error)})") from None
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran:
            hint = " (NCHW? ADM batches are NHWC)" if len(shape) == 4 and shape[1] == 3 and shape[-1] != 3 else ""
            raise UserError(f"{option} {path}: arr_0 is {dtype} {tuple(shape)}{' Fortran-ordered' if fortran else ''}; "
                            f"expected uint8 (N, H, W, 3) as ADM batches{hint}")
        self.shape = tuple(int(s) for s in shape)
        self.count, self.height, self.width = self.shape[0], self.shape[1], self.shape[2]
        if self.offset is not None and self.path.stat().st_size < self.offset + int(np.prod(self.shape)):
            raise UserError(f"{option} {path}: truncated file (arr_0 needs {np.prod(self.shape)} bytes)")

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise ValueError("bad local zip header")
            name_length = int.from_bytes(local[26:28], "little")
            extra_length = int.from_bytes(local[28:30], "little")
        return info.header_offset + 30 + name_length + extra_length

    def batches(self, batch_size: int, limit: int | None = None, workers: int = 0,
                share: tuple[int, int] = (0, 1)) -> Iterator[torch.Tensor]:
        count = limit or self.count
        rank, world = share
        if self.offset is not None:
            array = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=self.shape)
            for start in range(rank * batch_size, count, world * batch_size):
                chunk = np.array(array[start : min(start + batch_size, count)])
                yield torch.from_numpy(chunk).permute(0, 3, 1, 2)
            del array
            return
        item = self.height * self.width * 3
        with zipfile.ZipFile(self.path) as archive, archive.open("arr_0.npy") as stream:
            _read_npy_header(stream)  # compressed: no seeking, the other processes' batches are read past
            for k, start in enumerate(range(0, count, batch_size)):
                n = min(batch_size, count - start)
                data = stream.read(n * item)
                if len(data) != n * item:
                    raise UserError(f"{self.option} {self.path}: arr_0 ends early (truncated file)")
                if k % world == rank:
                    chunk = np.frombuffer(data, dtype=np.uint8).reshape(n, self.height, self.width, 3)
                    yield torch.from_numpy(chunk.copy()).permute(0, 3, 1, 2)

    def content_sha256(self, workers: int = 8) -> str:
        total = hashlib.sha256(b"npz\n")
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                total.update(chunk)
        return total.hexdigest()


def open_image_input(path: Path | str, option: str, workers: int = 8) -> ImageInput:
    p = Path(path).expanduser()
    if p.is_dir():
        return FolderImages(p, option, workers)
    if not p.exists():
        raise UserError(f"{option} {path}: no such file or folder")
    if p.suffix.lower() != ".npz":
        raise UserError(f"{option} {path}: expected a folder of images or an ADM .npz (arr_0 uint8 NHWC)")
    return NpzImages(p, option)


# --------------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------------
@dataclass
class ReferenceStats:
    """What the metrics need from the reference; features are None when no images are available."""

    pool: Gaussian
    spatial: Gaussian | None
    features: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reference:
    path: Path
    kind: str  # folder | npz-images | adm-reference | stats
    images: ImageInput | None = None
    stats: ReferenceStats | None = None  # from the file

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": str(self.path), "kind": self.kind}
        if self.images is not None:
            out["images"] = self.images.count
            out["image_size"] = [self.images.height, self.images.width]
        if self.stats is not None:
            out["file_statistics_count"] = self.stats.pool.count
            if self.stats.meta:
                out["file_meta"] = self.stats.meta
        return out


def _float_array(data, key: str, shape: tuple[int, ...], option: str, path: Path) -> np.ndarray:
    try:
        value = data[key]
    except Exception as error:  # noqa: BLE001 - a damaged member
        raise UserError(f"{option} {path}: cannot read {key} ({one_line(error)})") from None
    if value.dtype.kind not in "fiu" or tuple(value.shape) != shape:
        raise UserError(f"{option} {path}: {key} is {value.dtype} {tuple(value.shape)}; expected float {shape}")
    value = value.astype(np.float64)
    if not np.all(np.isfinite(value)):
        raise UserError(f"{option} {path}: {key} holds NaN or infinite values")
    return value


def _feature_dim(data, option: str, path: Path) -> int:
    """The width of a teacher's statistics, from `mu`."""
    try:
        shape = data["mu"].shape
    except Exception as error:  # noqa: BLE001 - a damaged member
        raise UserError(f"{option} {path}: cannot read mu ({one_line(error)})") from None
    if len(shape) != 1 or shape[0] < 1:
        raise UserError(f"{option} {path}: mu has shape {tuple(shape)}; expected (D,)")
    return int(shape[0])


def stats_extractor(stats: ReferenceStats) -> str:
    """The extractor statistics were computed with (files without the field are Inception's)."""
    return str(stats.meta.get("extractor", INCEPTION))


def read_stats_file(path: Path, option: str = "--ref") -> tuple[ReferenceStats | None, set[str]]:
    """Statistics in an .npz (ADM reference batch or ours) and the set of member names."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{option} {path}: not a readable .npz ({one_line(error)})") from None
    if "mu" not in names and "sigma" not in names:
        return None, names
    if not {"mu", "sigma"} <= names:
        raise UserError(f"{option} {path}: has {'mu' if 'mu' in names else 'sigma'} but not "
                        f"{'sigma' if 'mu' in names else 'mu'}; expected both (pool_3 mean and covariance)")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001
        raise UserError(f"{option} {path}: not a readable .npz ({one_line(error)})") from None
    with data:
        meta: dict[str, Any] = {}
        if "sendvae_fid" in names:
            try:
                meta = json.loads(str(data["sendvae_fid"]))
            except Exception:  # noqa: BLE001
                raise UserError(f"{option} {path}: sendvae_fid is not valid JSON") from None
        count = meta.get("count")
        extractor = meta.get("extractor", INCEPTION)
        dim = POOL_DIM if extractor == INCEPTION else _feature_dim(data, option, path)
        pool = Gaussian(_float_array(data, "mu", (dim,), option, path),
                        _float_array(data, "sigma", (dim, dim), option, path), count)
        spatial = None
        if {"mu_s", "sigma_s"} <= names and extractor == INCEPTION:
            spatial = Gaussian(_float_array(data, "mu_s", (SPATIAL_DIM,), option, path),
                               _float_array(data, "sigma_s", (SPATIAL_DIM, SPATIAL_DIM), option, path), count)
        features = None
        if "features" in names:
            features = data["features"]
            if features.ndim != 2 or features.shape[1] != dim or features.dtype.kind != "f":
                raise UserError(f"{option} {path}: features is {features.dtype} {tuple(features.shape)}; "
                                f"expected float (N, {dim})")
            features = features.astype(np.float32, copy=False)
    return ReferenceStats(pool, spatial, features, meta), names


def open_reference(path: Path | str, workers: int = 8) -> Reference:
    option = "--ref"
    p = Path(path).expanduser()
    if p.is_dir():
        return Reference(p, "folder", images=FolderImages(p, option, workers))
    if not p.exists():
        raise UserError(f"{option} {path}: no such file or folder")
    if p.suffix.lower() != ".npz":
        raise UserError(f"{option} {path}: expected a folder of images, an ADM reference batch .npz, "
                        f"or statistics saved by --save-stats")
    stats, names = read_stats_file(p, option)
    images = NpzImages(p, option) if "arr_0" in names else None
    if stats is None:
        if images is None:
            raise UserError(f"{option} {path}: neither images (arr_0) nor statistics (mu, sigma) in this .npz")
        return Reference(p, "npz-images", images=images)
    kind = "stats" if stats.meta.get("format") == STATS_FORMAT else "adm-reference"
    return Reference(p, kind, images=images, stats=stats)


# --------------------------------------------------------------------------------------------
# statistics files and the cache
# --------------------------------------------------------------------------------------------
def save_stats(path: Path, stats: ReferenceStats, meta: dict[str, Any]) -> None:
    """Write statistics atomically (temporary name, then rename)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"mu": stats.pool.mu, "sigma": stats.pool.sigma}
    if stats.spatial is not None:
        arrays.update(mu_s=stats.spatial.mu, sigma_s=stats.spatial.sigma)
    if stats.features is not None:
        arrays["features"] = np.asarray(stats.features, dtype=np.float32)
    full = {"format": STATS_FORMAT, "version": STATS_VERSION, "protocol_version": PROTOCOL_VERSION,
            "count": stats.pool.count, **meta}
    arrays["sendvae_fid"] = np.array(json.dumps(full, sort_keys=True))
    remove_stale_temporaries(path.parent, path.name)  # a killed writer's half-written file
    with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
        np.savez(f, **arrays)


def cache_dir() -> Path:
    root = os.environ.get("SENDVAE_CACHE")
    base = Path(root).expanduser() if root else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sendvae"
    return base / "fid"


def cache_key(content_sha256: str, weights_sha256: str, pr_cap: int, extractor: str = INCEPTION) -> str:
    text = f"v{PROTOCOL_VERSION}|{content_sha256}|{weights_sha256}|pr{pr_cap}"
    if extractor != INCEPTION:  # Inception's keys stay what they were: existing caches keep working
        text += f"|{extractor}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]
