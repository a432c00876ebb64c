"""Resumable, crash-safe HDF5 caches of fixed-shape rows (teacher tokens, VAE latents, ...).

How a cache is written, so that `kill -9` at any moment loses nothing and a rerun ends with
the same bytes as an uninterrupted run:

* Rows are grouped in fixed blocks (`block_rows`). Each block is its own HDF5 file in
  `OUT.parts/`, created under a temporary name with every chunk allocated up front and then
  renamed. Writing a row afterwards only overwrites raw data, never HDF5 metadata, so a crash
  cannot corrupt the file, only leave rows that were not yet counted.
* A block counts its finished rows in a one-element dataset updated after the rows are
  flushed. A rerun continues every block from its count.
* Blocks are assigned to ranks round-robin. Batch composition inside a block does not depend
  on the number of processes, so the rows do not either.
* When every block is done, rank 0 copies them in row order into `OUT.merging` (one chunked
  dataset per array, chunks of one row), marks it complete and renames it to OUT. A file at
  OUT is therefore always complete; the parts are removed afterwards.

The configuration of a run is fingerprinted. A rerun with another configuration is refused
rather than mixing rows of two runs or overwriting either.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import h5py
import numpy as np

from sendvae_cli.errors import UserError

FORMAT_VERSION = 1
PROGRESS = "_rows_done"


@dataclass(frozen=True)
class ArraySpec:
    row_shape: tuple[int, ...]
    dtype: str


def fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def config_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys[:3]) or "unknown"


def _create_preallocated(file: h5py.File, name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...]):
    """A chunked dataset whose chunks all exist on disk before any row is written."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(chunks)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # allocate, but never write fill values
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(shape)
    h5py.h5d.create(file.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=dcpl)


class Block:
    """Rows [start, stop) of a cache in their own file."""

    def __init__(self, path: Path, start: int, stop: int, arrays: Mapping[str, ArraySpec], print_: str):
        self.path, self.start, self.stop = path, start, stop
        if not path.exists():
            tmp = path.with_name(path.name + ".creating")
            with h5py.File(tmp, "w", track_order=False) as f:
                for name, spec in arrays.items():
                    _create_preallocated(f, name, (stop - start, *spec.row_shape), spec.dtype, (1, *spec.row_shape))
                _create_preallocated(f, PROGRESS, (1,), "int64", (1,))
                f[PROGRESS][0] = 0
                f.attrs["fingerprint"] = print_
                f.attrs["start"] = start
                f.attrs["stop"] = stop
            os.replace(tmp, path)
        self.file = h5py.File(path, "r+")
        if self.file.attrs.get("fingerprint") != print_:
            self.file.close()
            raise UserError(f"{path}: block written by another configuration; delete {path.parent} to start over")
        self.rows_done = int(self.file[PROGRESS][0])

    @property
    def finished(self) -> bool:
        return self.start + self.rows_done >= self.stop

    def write(self, rows: Mapping[str, np.ndarray]) -> None:
        """Append rows after the ones already done; counted only once they are on disk."""
        count = len(next(iter(rows.values())))
        lo = self.rows_done
        for name, values in rows.items():
            self.file[name][lo : lo + count] = values
        self.file.flush()
        self.file[PROGRESS][0] = lo + count
        self.file.flush()
        self.rows_done = lo + count

    def read(self, name: str, lo: int, hi: int) -> np.ndarray:
        return self.file[name][lo - self.start : hi - self.start]

    def close(self) -> None:
        self.file.close()


class RowCache:
    """A cache being written: its blocks, their assignment to ranks, and the final merge."""

    def __init__(self, out: Path, num_rows: int, arrays: Mapping[str, ArraySpec], config: Mapping[str, Any],
                 block_rows: int = 1024):
        self.out = Path(out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.num_rows = num_rows
        self.arrays = dict(arrays)
        self.block_rows = block_rows
        self.config = dict(config, rows=num_rows, block_rows=block_rows,
                           arrays={k: [list(v.row_shape), v.dtype] for k, v in self.arrays.items()})
        self.fingerprint = fingerprint(self.config)

    # -- state of what is on disk ------------------------------------------------------------
    def existing_complete(self) -> bool:
        """True if OUT exists and was written by this configuration; an error if by another."""
        if not self.out.exists():
            return False
        try:
            with h5py.File(self.out, "r") as f:
                old = json.loads(f.attrs.get("config", "{}"))
                done = bool(f.attrs.get("complete", False))
        except OSError as error:
            raise UserError(f"--out {self.out}: exists and is not a readable HDF5 file ({error}); choose another --out") from None
        if fingerprint(old) != self.fingerprint:
            raise UserError(f"--out {self.out}: exists with another configuration ({config_difference(old, self.config)}); "
                            f"choose another --out or delete it")
        if not done:
            raise UserError(f"--out {self.out}: exists but is marked incomplete; delete it to start over")
        return True

    def prepare(self, is_main: bool) -> None:
        """Create (or check) the parts folder and its manifest."""
        manifest = self.parts / "manifest.json"
        if is_main:
            self.parts.mkdir(parents=True, exist_ok=True)
            if manifest.exists():
                old = json.loads(manifest.read_text())
                if old.get("fingerprint") != self.fingerprint:
                    raise UserError(
                        f"{self.parts}: holds an unfinished run of another configuration "
                        f"({config_difference(old.get('config', {}), self.config)}); rerun that one to finish it, "
                        f"or delete the folder"
                    )
            else:
                tmp = manifest.with_name("manifest.json.tmp")
                tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "config": self.config}, indent=2, default=str))
                os.replace(tmp, manifest)

    def block_ranges(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.block_rows, self.num_rows)) for s in range(0, self.num_rows, self.block_rows)]

    def block_path(self, index: int) -> Path:
        return self.parts / f"block-{index:06d}.h5"

    def open_blocks(self, rank: int, world: int) -> list[Block]:
        return [
            Block(self.block_path(i), start, stop, self.arrays, self.fingerprint)
            for i, (start, stop) in enumerate(self.block_ranges())
            if i % world == rank
        ]

    # -- merge -------------------------------------------------------------------------------
    def merge(self, attrs: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
              extra: Mapping[str, np.ndarray] | None = None, chunk_rows: int = 256,
              compression: str | None = None,
              observe: Callable[[str, np.ndarray], None] | None = None) -> None:
        """Copy every block into OUT in row order; OUT appears only once complete.

        `compression` ("gzip" or "lzf") applies to the merged arrays only: blocks stay
        uncompressed so that rows can be overwritten in place. `observe(name, rows)` sees every
        row of every array exactly once, in row order, as it is copied (a streaming statistics
        hook); `attrs` may be a callable, evaluated after the copy, so that attributes can hold
        what `observe` accumulated. Both are deterministic, so the file stays byte-identical.
        """
        tmp = self.out.with_name(self.out.name + ".merging")
        blocks = [Block(self.block_path(i), s, e, self.arrays, self.fingerprint)
                  for i, (s, e) in enumerate(self.block_ranges())]
        try:
            unfinished = [b.path.name for b in blocks if not b.finished]
            if unfinished:
                raise RuntimeError(f"cannot merge: unfinished blocks {unfinished[:3]}")
            with h5py.File(tmp, "w") as f:
                for name, spec in self.arrays.items():
                    ds = f.create_dataset(name, shape=(self.num_rows, *spec.row_shape), dtype=spec.dtype,
                                          chunks=(1, *spec.row_shape), track_times=False,
                                          compression=compression if spec.row_shape else None)
                    for block in blocks:
                        for lo in range(block.start, block.stop, chunk_rows):
                            hi = min(lo + chunk_rows, block.stop)
                            values = block.read(name, lo, hi)
                            if observe is not None:
                                observe(name, values)
                            ds[lo:hi] = values
                for name, values in (extra or {}).items():
                    dtype = h5py.string_dtype() if values.dtype == object else values.dtype
                    f.create_dataset(name, data=values, dtype=dtype, track_times=False)
                for key, value in (attrs() if callable(attrs) else attrs).items():
                    f.attrs[key] = value
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["config"] = json.dumps(self.config, sort_keys=True, default=str)
                f.attrs["complete"] = True
            os.replace(tmp, self.out)
        finally:
            for block in blocks:
                block.close()
        shutil.rmtree(self.parts, ignore_errors=True)


def batches(blocks: list[Block], batch_size: int) -> Iterator[tuple[Block, list[int]]]:
    """(block, row indices) of every batch still to compute; batches never cross a block."""
    for block in blocks:
        lo = block.start + block.rows_done
        # Batches are aligned to the block start, so a resumed block computes the same batches.
        for s in range(lo, block.stop, batch_size):
            yield block, list(range(s, min(s + batch_size, block.stop)))


def parts_progress(out: Path) -> dict[str, Any] | None:
    """Where an unfinished run of OUT stands, read from `OUT.parts/` (None when there is none).

    Safe while the run is going on: block files are opened read-only without HDF5 file locking,
    and only their row counters are read. Returns the manifest's configuration, the row and
    block counts, and how many rows each block file holds so far.
    """
    parts = Path(out).with_name(Path(out).name + ".parts")
    manifest = parts / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        saved = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    config = saved.get("config", {})
    num_rows = int(config.get("rows", 0))
    block_rows = int(config.get("block_rows", 1) or 1)
    blocks = []
    for i, start in enumerate(range(0, num_rows, block_rows)):
        stop = min(start + block_rows, num_rows)
        path = parts / f"block-{i:06d}.h5"
        done = 0
        if path.exists():
            try:
                with h5py.File(path, "r", locking=False) as f:
                    done = int(f[PROGRESS][0])
            except (OSError, KeyError):
                done = 0
        blocks.append({"block": i, "start": start, "stop": stop, "rows_done": min(done, stop - start),
                       "exists": path.exists()})
    return {
        "parts": str(parts),
        "config": config,
        "rows": num_rows,
        "rows_done": sum(b["rows_done"] for b in blocks),
        "blocks": len(blocks),
        "blocks_done": sum(b["rows_done"] == b["stop"] - b["start"] for b in blocks),
        "block_files": blocks,
        "merging": parts.with_name(Path(out).name + ".merging").exists(),
    }
