"""What `train-sit` reads: latent rows, their labels and (for REPA) the teacher tokens that go with them.

The split between the data-loader workers and the training device:

    worker:  the stored float16 posterior mean and std of the row's view (original or flipped),
             its label and row index, and, for REPA, either the uint8 image of the same view
             (`--images`) or the float16 teacher tokens of that row (`--teacher-features`)
    device:  z = mean + std * eps, (z - latent_mean) / latent_std, the teacher on the images

Sampling and normalising in the workers would ship float32 latents and spend the workers' time
on arithmetic the device does for free: on 2 cores it holds the reader at about half the rate
of shipping float16 mean/std (benchmarks/latent_read.py).

Everything random about a row is a function of its place in the stream of rows, never of the
worker, batch size or number of processes:
  - the view (original / flipped) of stream position p: a hash of (seed, p);
  - eps, the flow noise and time, the label drop: drawn on the device from a generator seeded by
    (seed, step, global micro-batch index) (see `micro_batch_generator`; every seed is in sendvae_cli/seeds.py).

Rows of the latent cache are matched to the image source and to a feature cache by row id (the
`rows` array every sendvae cache stores), so a cache made from a subset or another order of the
images still finds its own images; a row that cannot be found is an error, never a silent skip.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch

from sendvae_cli.caches.h5rows import pread_row, row_offsets
from sendvae_cli.caches.latent_dataset import LatentDataset
from sendvae_cli.errors import UserError
from sendvae_cli.seeds import sit_micro_batch_seed, view_bit
from sendvae_cli.train.batches import StreamBatchSampler

FLIP_MODES = ("auto", "random", "none")


#################################################################################
#                               Row identities                                  #
#################################################################################


def read_row_ids(f: h5py.File) -> list[str] | None:
    """The `rows` array of a sendvae cache as strings, or None for caches without one."""
    if "rows" not in f:
        return None
    return [r.decode() if isinstance(r, bytes) else str(r) for r in f["rows"][()]]


def match_rows(wanted: Sequence[str], have: Sequence[str], what: str) -> np.ndarray:
    """For each wanted row id, its index in `have`; a one-line UserError naming the first one missing."""
    if list(wanted) == list(have[: len(wanted)]):
        return np.arange(len(wanted), dtype=np.int64)
    where = {row: i for i, row in enumerate(have)}
    index = np.fromiter((where.get(row, -1) for row in wanted), dtype=np.int64, count=len(wanted))
    missing = np.flatnonzero(index < 0)
    if len(missing):
        raise UserError(f"{what}: {len(missing)} of the {len(wanted)} latent rows are missing from it "
                        f"(first: {wanted[missing[0]]!r}); give the images or features the cache was made from")
    return index


def token_grid_message(latent_hw: Sequence[int], patch: int, grid: Sequence[int], model: str, teacher: str) -> str:
    """Why teacher tokens cannot be aligned with the SiT's tokens, and which patch size would fit."""
    h, w = latent_hw
    sit_grid = (h // patch, w // patch)
    fits = [p for p in (1, 2, 4, 8) if h % p == 0 and (h // p, w // p) == tuple(grid)]
    hint = (f"patch size {fits[0]} fits (e.g. a SiT-*/{fits[0]} model)" if fits
            else "no SiT patch size fits; extract at another --resolution")
    return (f"{teacher}: teacher tokens form a {grid[0]}x{grid[1]} grid, {model} sees {sit_grid[0]}x{sit_grid[1]} "
            f"tokens ({h}x{w} latents, patch {patch}); {hint}")


#################################################################################
#                        Feature caches (sendvae extract)                       #
#################################################################################


@dataclass
class TokenTargets:
    """An `extract` cache, checked and matched to latent rows; read lazily, once per process."""

    path: str
    teacher: str
    width: int
    grid: tuple[int, int]
    index: np.ndarray  # latent row -> feature row
    has_flip: bool = False
    # byte offset of each row of tokens (and tokens_flip): rows are read with pread (h5rows.row_offsets)
    offsets: tuple[np.ndarray, ...] | None = field(default=None, repr=False)
    _file: Any = field(default=None, repr=False)
    _pid: int | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, latent_rows: Sequence[str] | None, num_latent_rows: int,
             teacher: str | None) -> "TokenTargets":
        option = f"--teacher-features {path}"
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"{option}: no such file")
        try:
            f = h5py.File(path, "r")
        except OSError as error:
            raise UserError(f"{option}: not a readable HDF5 file ({str(error)[:120]})") from None
        with f:
            attrs = f.attrs
            if "tokens" not in f or not attrs.get("complete", False):
                raise UserError(f"{option}: not a finished `sendvae extract` cache")
            name = str(attrs.get("teacher"))
            if teacher is not None and name != teacher:
                raise UserError(f"{option}: holds tokens of teacher {name!r}, not of --teacher {teacher}")
            rows = read_row_ids(f)
            count = f["tokens"].shape[0]
            if latent_rows is None or rows is None:
                if count < num_latent_rows:
                    raise UserError(f"{option}: {num_latent_rows - count} of the {num_latent_rows} latent rows are "
                                    f"missing from it (it holds {count} rows and no row ids)")
                index = np.arange(num_latent_rows, dtype=np.int64)
            else:
                index = match_rows(latent_rows, rows, option)
            has_flip = "tokens_flip" in f
            offsets = tuple(row_offsets(f, a) for a in ("tokens", "tokens_flip")[: 1 + has_flip])
            return cls(path=str(path), teacher=name, width=int(attrs["teacher_width"]),
                       grid=tuple(int(v) for v in attrs["token_grid"]), index=index, has_flip=has_flip,
                       offsets=None if any(o is None for o in offsets) else offsets)

    def read(self, latent_rows: Sequence[int], views: Sequence[int]) -> np.ndarray:
        """float16 (B, N, D) tokens of the given latent rows, of the flipped image where view is 1."""
        if self._file is None or self._pid != os.getpid():
            # A handle inherited from another process (a forked worker) is never used.
            self._pid = os.getpid()
            self._file = os.open(self.path, os.O_RDONLY) if self.offsets is not None else h5py.File(self.path, "r")
        rows = self.index[np.asarray(latent_rows, dtype=np.int64)]
        out = np.empty((len(rows), self.grid[0] * self.grid[1], self.width), np.float16)
        if self.offsets is not None:
            for j, (row, view) in enumerate(zip(rows, views)):
                try:
                    pread_row(self._file, out[j], int(self.offsets[int(view)][row]))
                except OSError as error:
                    raise UserError(f"--teacher-features {self.path}: row {row}: {error.strerror}") from None
            return out
        arrays = (self._file["tokens"], self._file["tokens_flip"] if self.has_flip else None)
        for j, (row, view) in enumerate(zip(rows, views)):
            # one row at a time: h5py's fancy indexing is 25x slower than this for scattered rows
            arrays[int(view)].read_direct(out, np.s_[int(row)], np.s_[j])
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None  # never ship an open file to another process
        return state


#################################################################################
#                                 The dataset                                   #
#################################################################################


class SiTBatchSampler(StreamBatchSampler):
    """`StreamBatchSampler` whose micro-batches are lists of (row, view) pairs.

    The view of a row is decided by its position in the stream, so it does not depend on how the
    global batch is split into micro-batches and processes; with flips off every view is 0."""

    def __init__(self, *args, flip: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.flip = flip

    def micro_batches(self, step: int) -> list[list[tuple[int, int]]]:
        base = step * self.global_batch
        out = []
        for m in range(self.accum):
            start = base + ((m * self.world) + self.rank) * self.b
            rows = self.rows(start, self.b)
            views = [view_bit(self.seed, start + k) if self.flip else 0 for k in range(len(rows))]
            out.append(list(zip(rows, views)))
        return out


class SiTRows(torch.utils.data.Dataset):
    """Micro-batches of raw rows for `train-sit` (see the module docstring for what is shipped).

    `__getitems__` takes (row, view) pairs from `SiTBatchSampler` and returns one dict of
    batched arrays; use `collate=keep_batch` in the DataLoader."""

    def __init__(self, latents: LatentDataset, *, images=None, image_index: np.ndarray | None = None,
                 features: TokenTargets | None = None):
        self.latents = latents
        self.images = images
        self.image_index = image_index
        self.features = features

    def __len__(self) -> int:
        return len(self.latents)

    def __getitems__(self, items: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        rows = [int(r) for r, _ in items]
        views = [int(v) for _, v in items]
        shape = self.latents.latent_shape
        raw = np.empty((2, len(rows), *shape), np.float16)
        for j, (row, view) in enumerate(zip(rows, views)):
            self.latents.read(row, view, out=raw[:, j])
        batch = {
            "mean": torch.from_numpy(raw[0]),
            "std": torch.from_numpy(raw[1]),
            "labels": torch.from_numpy(self.latents.labels[rows]),
            "rows": torch.tensor(rows, dtype=torch.int64),
            "views": torch.tensor(views, dtype=torch.uint8),
        }
        if self.images is not None:
            pictures = []
            for row, view in zip(rows, views):
                image = self.images[int(self.image_index[row])][0]
                pictures.append(image.flip(-1) if view else image)
            batch["images"] = torch.stack(pictures)
        if self.features is not None:
            batch["tokens"] = torch.from_numpy(self.features.read(rows, views))
        return batch

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.__getitems__([item])


def keep_batch(batch):
    """DataLoader collate for datasets that already return whole batches."""
    return batch


#################################################################################
#                             On the training device                            #
#################################################################################


def micro_batch_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The generator of one micro-batch's random numbers: a function of its place in training only.

    `micro` is the global micro-batch index (micro * world + rank), so N processes draw the same
    numbers as one process accumulating N micro-batches."""
    return torch.Generator(device=device).manual_seed(sit_micro_batch_seed(seed, step, micro))


class LatentNormalizer(torch.nn.Module):
    """Posterior sample and per-channel normalisation, on the device: (mean + std * eps - mu) / sigma."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(np.asarray(mean, np.float64), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("sigma", torch.as_tensor(np.asarray(std, np.float64), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        mean, std = mean.float(), std.float()
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        return (torch.addcmul(mean, std, eps) - self.mu) / self.sigma

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.sigma + self.mu


#################################################################################
#                                Opening the data                               #
#################################################################################


@dataclass
class SiTData:
    """Everything `train-sit` knows about its data once it has been opened and checked."""

    latents: LatentDataset
    dataset: SiTRows
    latent_shape: tuple[int, int, int]
    num_classes: int
    conditional: bool
    latent_mean: np.ndarray
    latent_std: np.ndarray
    stats_source: str
    flip: bool
    attrs: dict[str, Any]
    features: TokenTargets | None = None
    image_source: Any = None

    def describe(self) -> dict[str, Any]:
        """What of the data decides the result (recorded in config.json)."""
        return {
            "latent_shape": list(self.latent_shape),
            "data_rows": len(self.latents),
            "num_classes": self.num_classes,
            "conditional": self.conditional,
            "flip": self.flip,
            "latent_mean": [float(v) for v in self.latent_mean],
            "latent_std": [float(v) for v in self.latent_std],
            "latent_stats_source": self.stats_source,
            "vae_weights_sha256": self.attrs.get("vae_weights_sha256"),
            "row_order_sha256": self.attrs.get("row_order_sha256"),
        }


def resolve_labels(latents: LatentDataset, num_classes: int | None, option: str) -> tuple[int, bool]:
    """(num_classes, conditional) from the cache's labels and --num-classes."""
    labels = latents.labels
    labelled = len(labels) and (labels >= 0).all()
    cache_classes = latents.num_classes
    if labelled and cache_classes is None:
        cache_classes = int(labels.max()) + 1
    if num_classes is not None:
        if num_classes <= 0:
            raise UserError(f"--num-classes {num_classes}: expected a positive number")
        if labelled and num_classes < cache_classes:
            raise UserError(f"--num-classes {num_classes}: {option} holds labels up to {int(labels.max())}; "
                            f"give at least {int(labels.max()) + 1}")
        return num_classes, bool(labelled)
    if not labelled:
        raise UserError(f"{option}: the cache has no labels (or some rows unlabelled); give --num-classes N for "
                        f"unconditional training with the null class")
    return int(cache_classes), True


def open_sit_data(latents_path: Path, *, seed: int, flip: str = "auto", num_classes: int | None = None,
                  latent_stats: Path | None = None, images: str | None = None, features: Path | None = None,
                  teacher: str | None = None, registry=None, need_teacher: bool = True,
                  root: str | None = None) -> SiTData:
    """Open and check the latent cache and the teacher's source; refuse mismatches in one line."""
    if flip not in FLIP_MODES:
        raise UserError(f"--flip {flip}: expected one of {', '.join(FLIP_MODES)}")
    option = f"LATENTS {latents_path}"
    latents = LatentDataset(latents_path, seed=seed, stats=latent_stats)
    classes, conditional = resolve_labels(latents, num_classes, option)
    if latents.layout == "sendvae":
        with h5py.File(latents.path, "r") as f:
            latent_rows = read_row_ids(f)
    else:
        latent_rows = [k.split("/")[-1] for k in latents.keys]

    image_source, image_index, feature_cache = None, None, None
    if need_teacher:
        if images is not None and features is not None:
            raise UserError("--images and --teacher-features: give one source of teacher tokens, not both")
        if images is None and features is None:
            raise UserError("REPA needs teacher tokens: give --teacher-features FEATS.h5 (from `sendvae extract`) or "
                            "--images DATA (the images the cache was made from), or --proj-weight 0")
        if features is not None:
            feature_cache = TokenTargets.open(Path(features), latent_rows, len(latents), teacher)
        else:
            image_source, image_index = open_image_rows(images, latents, latent_rows, registry, root=root)

    # Flips only when the teacher's target for the flipped view exists too.
    exact_flip = not need_teacher or image_source is not None or (feature_cache is not None and feature_cache.has_flip)
    if flip == "random" and not latents.has_flip:
        raise UserError(f"--flip random: {option} has no flipped views (make it with `sendvae cache-latents --flip`)")
    if flip == "random" and not exact_flip:
        raise UserError(f"--flip random: --teacher-features {features} holds no tokens of flipped images; "
                        f"give --images DATA for the flipped views, or --flip none")
    use_flip = latents.has_flip and exact_flip and flip != "none"
    dataset = SiTRows(latents, images=image_source, image_index=image_index, features=feature_cache)
    return SiTData(latents=latents, dataset=dataset, latent_shape=tuple(latents.latent_shape), num_classes=classes,
                   conditional=conditional, latent_mean=np.asarray(latents.latent_mean, np.float64),
                   latent_std=np.asarray(latents.latent_std, np.float64), stats_source=latents.stats_source,
                   flip=use_flip, attrs=dict(latents.attrs), features=feature_cache, image_source=image_source)


def _short(described: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in described.items() if k in ("kind", "root", "name", "rows", "seed"))


def open_image_rows(images: str, latents: LatentDataset, latent_rows: list[str] | None, registry, *,
                    root: str | None = None):
    """The image source behind --images at the cache's resolution (a dataset on disk under `root`),
    and latent row -> image row. Images of another kind than the cache's, or in another order
    where the cache records no row ids, are refused: REPA would align the wrong pictures."""
    from sendvae_cli.data.open import open_images

    attrs = latents.attrs
    resolution = attrs.get("resolution")
    if resolution is None:
        raise UserError(f"--images {images}: the latent cache does not record its image resolution; "
                        f"use --teacher-features")
    described = json.loads(attrs.get("source") or "{}")
    seed = int(described.get("seed", 0)) if described.get("kind") == "shapes" else 0
    if registry is None:
        from sendvae_cli.registry import get_registry

        registry = get_registry()
    source = open_images(images, registry=registry, resolution=int(resolution), seed=seed, root=root)
    kind = source.describe().get("kind")
    if described.get("kind") not in (None, "arrays") and kind != described["kind"]:
        raise UserError(f"--images {images}: holds {kind} images, the latent cache was made from {described['kind']} "
                        f"images ({_short(described)}); pass the images the cache was made from")
    recorded_order = attrs.get("row_order_sha256")
    if latent_rows is None and recorded_order and len(source) == len(latents) \
            and source.row_order_sha256() != recorded_order:
        raise UserError(f"--images {images}: not the images of the latent cache (row order sha256 "
                        f"{source.row_order_sha256()[:12]}…, the cache records {str(recorded_order)[:12]}…)")
    have = source.row_ids()
    if latent_rows is None:
        if len(have) < len(latents):
            raise UserError(f"--images {images}: {len(latents) - len(have)} of the {len(latents)} latent rows are "
                            f"missing from it (it holds {len(have)} images)")
        return source, np.arange(len(latents), dtype=np.int64)
    return source, match_rows(latent_rows, have, f"--images {images}")
