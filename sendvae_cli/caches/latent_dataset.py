"""Reading latent caches: `LatentDataset`, a torch Dataset over `sendvae cache-latents` output
(and over REPA-E's latent caches), plus what the writer and the reader share about the format.

A sendvae latent cache (docs/formats.md, "Latent cache") holds, per row, the VAE posterior
`mean` and `std` in float16 (and `mean_flip` / `std_flip`, the posterior of the horizontally
flipped image, with `--flip`), `labels`, `rows`, and per-channel statistics in its attributes.

What a row of the dataset is: `z = mean + std * eps` (eps ~ N(0, I) drawn from a generator
seeded by (seed, epoch, index), so a row is reproducible and never depends on the worker, batch
or world size), from a view picked by the same generator when the cache has a flipped view,
normalised per channel `(z - latent_mean) / latent_std` with the cache's statistics.

Statistics (`LatentMoments`): the moments of exactly that `z`, over every row, both views and
every spatial position, per channel, population moments (ddof 0):

    E[z]   = E[mean]
    Var[z] = E[(mean - E[mean])^2] + E[std^2]

accumulated in float64 in one streaming pass over the stored float16 values (Chan's pairwise
update for the first term, a plain sum for the second). The cache also records the moments of
the posterior means alone (`mode_mean`, `mode_std`: Var = the first term only).

Reading is fast because the payload is uncompressed and chunked one row per chunk: the byte
offset of every row's chunk is read once (HDF5 chunk index, in the main process), and each
DataLoader worker opens the file once, lazily, and reads rows with `os.pread`. A compressed cache
(or an h5py without `chunk_iter`) is read through h5py instead, the file again opened once per
worker. REPA-E caches (one `.npy`-named HDF5 dataset per image) are read through h5py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch

from sendvae_cli.caches.h5rows import pread_row, row_offsets
from sendvae_cli.errors import UserError
from sendvae_cli.seeds import row_seed

FORMAT = "sendvae-latents"
FORMAT_VERSION = 1
ARRAYS = ("mean", "std")
FLIP_ARRAYS = ("mean_flip", "std_flip")
REPAE_LABELS = "dataset.json"
REPAE_SUFFIX = ".npy"


#################################################################################
#                                  Statistics                                   #
#################################################################################


class LatentMoments:
    """Per-channel moments of z = mean + std * eps over rows of (B, C, H, W) posteriors, in float64.

    Feed every posterior-mean array to `add_means` and every std array to `add_stds`, in any
    order and chunking: the result is the same (up to float64 rounding) as numpy over the
    concatenation. `result()` gives (mean, std) of z; `mode()` the same for the posterior means.
    """

    def __init__(self, channels: int):
        self.channels = channels
        self.count = 0  # elements per channel seen by add_means
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)  # sum of squared deviations of the posterior means
        self.var_count = 0  # elements per channel seen by add_stds
        self.var_sum = np.zeros(channels, np.float64)  # sum of std^2

    def add_means(self, values: np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, H, W), got {x.shape}")
        n = x.shape[0] * x.shape[2] * x.shape[3]
        if n == 0:
            return
        chunk_mean = x.mean(axis=(0, 2, 3))
        chunk_m2 = ((x - chunk_mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3))
        total = self.count + n
        delta = chunk_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + chunk_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def add_stds(self, values: np.ndarray) -> None:
        s = np.asarray(values, dtype=np.float64)
        if s.ndim != 4 or s.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, H, W), got {s.shape}")
        self.var_sum += (s**2).sum(axis=(0, 2, 3))
        self.var_count += s.shape[0] * s.shape[2] * s.shape[3]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the posterior samples, float64 (C,)."""
        if not self.count or self.count != self.var_count:
            raise ValueError(f"statistics need as many std as mean values ({self.var_count} vs {self.count})")
        return self.mean.copy(), np.sqrt(self.m2 / self.count + self.var_sum / self.var_count)

    def mode(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the posterior means alone, float64 (C,)."""
        return self.mean.copy(), np.sqrt(self.m2 / max(self.count, 1))


#################################################################################
#                              Opening and checking                             #
#################################################################################


def parts_hint(path: Path) -> str:
    """' (still being written: ...)' when an unfinished run of `path` exists, else ''."""
    from sendvae_cli.caches.h5rows import parts_progress

    progress = parts_progress(path)
    if progress is None:
        return ""
    return (f" (not finished: {progress['rows_done']} of {progress['rows']} rows in {progress['parts']}; "
            f"rerun the cache-latents command to finish it, unless it is still running)")


def open_h5(path: Path, option: str = "latents") -> h5py.File:
    """The file read-only, or a one-line UserError naming it (missing, unfinished, truncated, not HDF5)."""
    path = Path(path).expanduser()
    if not path.exists():
        hint = parts_hint(path)
        if hint:
            raise UserError(f"{option} {path}: the cache is incomplete{hint}")
        raise UserError(f"{option} {path}: no such file")
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder, expected a latent cache (.h5 file)")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        reason = str(error).split("(", 1)[-1].rstrip(")") if "(" in str(error) else str(error)
        raise UserError(f"{option} {path}: not a readable HDF5 file, truncated or corrupt ({reason[:160]})") from None


def detect_layout(f: h5py.File) -> str:
    """'sendvae' or 'repa-e' (or a UserError saying what the file is not)."""
    if f.attrs.get("format") == FORMAT:
        return "sendvae"
    if REPAE_LABELS in f:
        return "repa-e"
    if "tokens" in f:
        raise UserError(f"latents {f.filename}: a teacher feature cache (sendvae extract), not a latent cache")
    raise UserError(f"latents {f.filename}: not a latent cache (expected a sendvae cache-latents file, "
                    f"or a REPA-E cache holding dataset.json)")


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(f: h5py.File, option: str = "latents", require_complete: bool = True) -> dict[str, Any]:
    """Attributes of a sendvae latent cache, checked: complete, readable version, arrays present."""
    attrs = {k: _attr(v) for k, v in f.attrs.items()}
    name = f.filename
    if require_complete and not attrs.get("complete", False):
        raise UserError(f"{option} {name}: the cache is marked incomplete; rerun the cache-latents command "
                        f"that wrote it (or delete the file)")
    version = attrs.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{option} {name}: format_version {version!r} is newer than this sendvae reads "
                        f"({FORMAT_VERSION}); upgrade sendvae")
    shape = tuple(attrs.get("latent_shape") or ())
    missing = [a for a in (*ARRAYS, "labels") if a not in f]
    if attrs.get("flip"):
        missing += [a for a in FLIP_ARRAYS if a not in f]
    if require_complete:
        missing += [a for a in ("latent_mean", "latent_std") if a not in attrs]
    if missing or len(shape) != 3:
        raise UserError(f"{option} {name}: damaged cache, missing {', '.join(missing) or 'latent_shape'}")
    rows = f["mean"].shape[0]
    for a in (*ARRAYS, *(FLIP_ARRAYS if attrs.get("flip") else ())):
        if f[a].shape != (rows, *shape):
            raise UserError(f"{option} {name}: damaged cache, {a} has shape {f[a].shape}, expected {(rows, *shape)}")
    return attrs


def stats_from(stats: Any, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float64 (C,) from a statistics file (REPA-E `*-latents-stats.pt`, LightningDiT
    `latents_stats.pt`) or a (mean, std) pair."""
    if isinstance(stats, (str, Path)):
        from sendvae_cli.vae.formats import read_latent_stats

        mean, std = read_latent_stats(Path(stats).expanduser(), channels, option="--latent-stats")
        return mean.double().numpy(), std.double().numpy()
    mean, std = (np.asarray(torch.as_tensor(v).double().flatten()) for v in stats)
    if mean.shape != (channels,) or std.shape != (channels,) or not (np.isfinite(std).all() and (std > 0).all()):
        raise UserError(f"latent statistics: expected {channels} means and {channels} positive stds")
    return mean, std


#################################################################################
#                                 REPA-E caches                                 #
#################################################################################


def repae_keys(f: h5py.File) -> list[str]:
    """The latent entries of a REPA-E cache in REPA-E's order (sorted names).

    REPA-E lists them in `<name>_h5.json` beside the file; without it, the file is walked.
    """
    listing = Path(f.filename).with_name(Path(f.filename).stem + "_h5.json")
    names: list[str] = []
    if listing.is_file():
        try:
            names = [n for n in json.loads(listing.read_text()) if isinstance(n, str)]
        except (OSError, ValueError):
            names = []
    if not names:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(n.replace("\\", "/") for n in names if n.lower().endswith(REPAE_SUFFIX))


def repae_labels(f: h5py.File, keys: Sequence[str]) -> np.ndarray:
    raw = f[REPAE_LABELS][()]
    try:
        text = raw.tobytes().decode() if isinstance(raw, np.ndarray) else bytes(raw).decode()
        pairs = json.loads(text).get("labels") or []
        table = {str(name).replace("\\", "/"): label for name, label in pairs}
    except (ValueError, AttributeError, TypeError) as error:
        raise UserError(f"latents {f.filename}: dataset.json is not REPA-E's {{\"labels\": [[name, label], ...]}} "
                        f"({error})") from None
    missing = [k for k in keys if k not in table]
    if missing:
        raise UserError(f"latents {f.filename}: dataset.json has no label for {missing[0]} "
                        f"({len(missing)} entries unlabelled)")
    return np.array([table[k] if table[k] is not None else -1 for k in keys], dtype=np.int64)


#################################################################################
#                                    Dataset                                    #
#################################################################################


def _open_for_reading(path: str, fast: bool):
    """One process's handle on the cache: an OS file descriptor (fast path) or an h5py File.

    Module-level so that tests can count how often a worker opens the file."""
    if fast:
        return os.open(path, os.O_RDONLY)
    return h5py.File(path, "r")


class LatentDataset(torch.utils.data.Dataset):
    """Rows of a latent cache: (latent float32 (C, H, W), label int).

    seed: noise and view choice of row i in epoch e depend on (seed, e, i) only.
    flip: "random" picks the original or the flipped view at random (when the cache has one),
        "none" always the original.
    normalize: apply (z - latent_mean) / latent_std with the cache's statistics.
    sample: False returns the posterior mean instead of a sample (probes, evaluation).
    stats: replace the statistics: a REPA-E `*-latents-stats.pt` / LightningDiT `latents_stats.pt`
        file, or a (mean, std) pair. For a REPA-E cache without `stats`, they are computed when the
        dataset is created (one float64 pass over the whole cache, same definition as ours).

    Call `set_epoch(e)` before iterating an epoch; the epoch lives in shared memory, so DataLoader
    workers (persistent or not) see it. Each worker opens the file once, on its first row.
    One process reads with one thread (work buffers are reused per process).
    """

    def __init__(self, path: str | Path, *, seed: int = 0, flip: str = "random", normalize: bool = True,
                 sample: bool = True, stats: Any = None):
        if flip not in ("random", "none"):
            raise UserError(f"flip={flip!r}: expected 'random' or 'none'")
        self.path = str(Path(path).expanduser())
        self.seed, self.flip_mode, self.normalize, self.sample = int(seed), flip, normalize, sample
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._handle: Any = None
        self._pid: int | None = None
        self.offsets: dict[str, np.ndarray] | None = None
        with open_h5(Path(self.path)) as f:
            self.layout = detect_layout(f)
            if self.layout == "sendvae":
                self._init_sendvae(f)
            else:
                self._init_repae(f)
                if stats is None:
                    self._compute_repae_stats(f)
        if stats is not None:
            mean, std = stats_from(stats, self.latent_shape[0])
            self.latent_mean, self.latent_std = mean, std
            self.stats_source = str(stats) if isinstance(stats, (str, Path)) else "given"
        self._mean_t = torch.from_numpy(self.latent_mean.astype(np.float32)).view(-1, 1, 1)
        self._std_t = torch.from_numpy(self.latent_std.astype(np.float32)).view(-1, 1, 1)

    # -- layouts ---------------------------------------------------------------------------
    def _init_sendvae(self, f: h5py.File) -> None:
        self.attrs = read_attrs(f)
        self.latent_shape = tuple(int(v) for v in self.attrs["latent_shape"])
        self.has_flip = bool(self.attrs.get("flip"))
        self.labels = f["labels"][:].astype(np.int64)
        self.latent_mean = np.asarray(self.attrs["latent_mean"], np.float64)
        self.latent_std = np.asarray(self.attrs["latent_std"], np.float64)
        self.stats_source = "cache"
        self.num_classes = self.attrs.get("num_classes")
        self.class_names = json.loads(self.attrs["class_names"]) if self.attrs.get("class_names") else None
        self.arrays = [ARRAYS] + ([FLIP_ARRAYS] if self.has_flip else [])
        self.offsets = self._chunk_offsets(f)

    def _chunk_offsets(self, f: h5py.File) -> dict[str, np.ndarray] | None:
        """Byte offset of every row's chunk, per array, when rows can be read with pread."""
        if len(self.labels) == 0:
            return None
        offsets = {}
        for name in (a for view in self.arrays for a in view):
            found = row_offsets(f, name) if f[name].shape[1:] == self.latent_shape else None
            if found is None:
                return None
            offsets[name] = found
        return offsets

    def _init_repae(self, f: h5py.File) -> None:
        self.attrs = {"layout": "repa-e"}
        self.keys = repae_keys(f)
        if not self.keys:
            raise UserError(f"latents {self.path}: REPA-E cache holds no img-mean-std-*.npy entries")
        first = f[self.keys[0]]
        if first.ndim != 3 or first.shape[0] % 2:
            raise UserError(f"latents {self.path}: {self.keys[0]} has shape {first.shape}, expected (2C, H, W) "
                            f"(posterior mean and std stacked)")
        self.latent_shape = (first.shape[0] // 2, *first.shape[1:])
        self.labels = repae_labels(f, self.keys)
        self.has_flip = False
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) and self.labels.max() >= 0 else None
        self.class_names = None
        self.arrays = [ARRAYS]
        self.latent_mean = self.latent_std = None

    def _compute_repae_stats(self, f: h5py.File) -> None:
        moments = LatentMoments(self.latent_shape[0])
        c = self.latent_shape[0]
        for key in self.keys:
            v = f[key][()][None]
            moments.add_means(v[:, :c])
            moments.add_stds(v[:, c:])
        self.latent_mean, self.latent_std = moments.result()
        self.stats_source = "computed on open"

    # -- torch Dataset -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def _handle_here(self):
        pid = os.getpid()
        if self._handle is None or self._pid != pid:
            # A handle inherited from another process (a forked worker) is never used.
            self._handle = _open_for_reading(self.path, self.layout == "sendvae" and self.offsets is not None)
            self._pid = pid
        return self._handle

    def _scratch(self, name: str, shape: tuple[int, ...], dtype=None):
        """A reused per-process buffer of at least `shape` (numpy when dtype is given, else torch float32)."""
        cache = self.__dict__.setdefault("_buffers", {})
        have = cache.get(name)
        if have is None or have.shape[1 if dtype is not None else 0] < shape[1 if dtype is not None else 0]:
            have = np.empty(shape, dtype) if dtype is not None else torch.empty(shape)
            cache[name] = have
        if dtype is not None:
            return have[:, :shape[1]]
        return have[:shape[0]]

    def read(self, index: int, view: int = 0, out: np.ndarray | None = None, arrays: int = 2) -> np.ndarray:
        """Stored mean and std of row `index`, view 0 (original) or 1 (flipped): (2, C, H, W).

        float16 for a sendvae cache (REPA-E's dtype for theirs); written into `out` when given.
        arrays=1 reads the mean only."""
        handle = self._handle_here()
        if self.layout == "repa-e":
            v = handle[self.keys[index]][()].reshape(2, *self.latent_shape)
            if out is None:
                return v
            out[:arrays] = v[:arrays]
            return out
        if out is None:
            out = np.empty((2, *self.latent_shape), np.float16)
        for k, name in enumerate(self.arrays[view][:arrays]):
            if self.offsets is not None:
                try:
                    pread_row(handle, out[k], int(self.offsets[name][index]))  # out[k] is contiguous
                except OSError as error:
                    raise UserError(f"latents {self.path}: row {index}: {error.strerror}") from None
            else:
                out[k] = handle[name][index]
        return out

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole mini-batch at once (DataLoader calls this): the same rows as __getitem__,
        with the float work done once per batch instead of once per row."""
        indices = [int(i) for i in indices]
        n = len(self.labels)
        for i in indices:
            if not 0 <= i < n:
                raise IndexError(i)
        epoch = self.epoch
        seeds = [row_seed(self.seed, epoch, i) for i in indices]
        random_view = self.has_flip and self.flip_mode == "random"
        arrays = 2 if self.sample else 1
        raw = self._scratch("raw", (2, len(indices), *self.latent_shape),
                            np.float32 if self.layout == "repa-e" else np.float16)
        for j, (i, (_, bit)) in enumerate(zip(indices, seeds)):
            self.read(i, bit if random_view else 0, out=raw[:, j], arrays=arrays)
        # Work in reused buffers (fresh multi-megabyte allocations cost more than the arithmetic);
        # only the result is a new tensor.
        z = torch.empty((len(indices), *self.latent_shape))
        if self.sample:
            noise = self._scratch("noise", z.shape)
            generator = torch.Generator()
            for j, (seed, _) in enumerate(seeds):
                generator.manual_seed(seed)
                torch.randn(self.latent_shape, generator=generator, out=noise[j])
            std = self._scratch("std", z.shape)
            std.copy_(torch.from_numpy(raw[1]))
            z.copy_(torch.from_numpy(raw[0]))
            z.addcmul_(std, noise)
        else:
            z.copy_(torch.from_numpy(raw[0]))
        if self.normalize:
            z.sub_(self._mean_t).div_(self._std_t)
        return [(z[j], int(self.labels[i])) for j, i in enumerate(indices)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        z, label = self.__getitems__([index])[0]
        return z.clone(), label

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is None or getattr(self, "_pid", None) != os.getpid():
            return
        try:
            os.close(handle) if isinstance(handle, int) else handle.close()
        except Exception:  # noqa: BLE001
            pass

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None  # never ship an open file to another process
        state.pop("_buffers", None)
        return state
