"""Resumable, crash-safe HDF5 caches of fixed-shape rows (teacher tokens, VAE latents, ...).

How a cache is written, so that `kill -9` at any moment, a full disk or a failing write lose
nothing, and a rerun ends with the same bytes as an uninterrupted run:

* Rows are grouped in fixed blocks (`block_rows`). Each block is its own HDF5 file in
  `OUT.parts/`: created under a temporary name with every array laid out contiguously, its
  disk space reserved (`posix_fallocate`, so a disk too small fails here, before any compute,
  naming the space needed), then renamed. HDF5 writes only that layout.
* Rows are then written by plain `pwrite` at the arrays' offsets, never through HDF5: HDF5
  defers raw writes to its chunk cache and reports a failed one only when an object is freed,
  where the error is lost (a full disk once left a block counting rows it never held). Here
  every failed write raises at once and stops the run with one line.
* A row is counted only once durable: its bytes and a CRC-32 of them (`_row_crc32`) are written
  and fsynced, then the block's counter (`_rows_done`) is written and fsynced. A rerun checks
  the rows it continues after against their CRCs, and the merge checks every row it copies:
  a row whose bytes do not match is recomputed, never merged.
* Blocks are assigned to ranks round-robin. Batch composition inside a block does not depend
  on the number of processes, so the rows do not either.
* When every block is done, rank 0 copies them in row order into `OUT.merging` (one chunked
  dataset per array, chunks of one row), marks it complete and renames it to OUT. A file at
  OUT is therefore always complete; the parts are removed afterwards. Side files (`OUT.json`)
  are written before that rename, so OUT never exists without them.

The configuration of a run is fingerprinted. A rerun with another configuration is refused
rather than mixing rows of two runs or overwriting either. Only one process writes an output
at a time: commands hold `sendvae_cli.locks.hold_output_lock(OUT)` around the whole run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import h5py
import numpy as np

from sendvae_cli.errors import UserError
from sendvae_cli.io import free_bytes, fsync_file, human_bytes, write_errors, write_json_atomic

FORMAT_VERSION = 1
PROGRESS = "_rows_done"
CHECKS = "_row_crc32"
BLOCK_LAYOUT = 2  # 1: chunked blocks written through HDF5 (no CRCs); recreated when found


@dataclass(frozen=True)
class ArraySpec:
    row_shape: tuple[int, ...]
    dtype: str

    @property
    def stored(self) -> np.dtype:
        return np.dtype(self.dtype).newbyteorder("<")

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.stored.itemsize


def fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def config_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys[:3]) or "unknown"


def _create_contiguous(file: h5py.File, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """A contiguous dataset whose storage exists in the file before any row is written."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # allocate, but never write fill values
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(shape)
    h5py.h5d.create(file.id, name.encode(), h5py.h5t.py_create(dtype), space, dcpl=dcpl)


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts, got = [], 0
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            raise OSError(errno.EIO, "unexpected end of file")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def row_offsets(f: h5py.File, name: str, dtype: str = "<f2") -> np.ndarray | None:
    """Byte offset in the file of every row of array `name` (stored as `dtype`) of a merged cache, or None.

    A merged cache stores each array in chunks of one row without filters, so a row is one
    contiguous run of bytes: readers fetch it with one `pread` (a tenth of the cost of h5py's
    per-row read, which is most of a small training step's data time). None where the array is
    laid out otherwise (another writer, compression) or this HDF5 cannot list chunks: read
    through h5py then. The first and last rows are read both ways and must agree."""
    ds = f[name]
    n = ds.shape[0] if ds.shape else 0
    if (n == 0 or ds.dtype != np.dtype(dtype) or ds.chunks != (1, *ds.shape[1:])
            or ds.id.get_create_plist().get_nfilters() != 0 or not hasattr(ds.id, "chunk_iter")):
        return None
    found = np.full(n, -1, np.int64)

    def visit(chunk):
        found[chunk.chunk_offset[0]] = chunk.byte_offset

    try:
        ds.id.chunk_iter(visit)
    except Exception:  # noqa: BLE001 - an HDF5 without chunk iteration: read through h5py
        return None
    if (found < 0).any():
        return None
    row_bytes = int(np.prod(ds.shape[1:])) * ds.dtype.itemsize
    with open(f.filename, "rb") as raw:
        for i in {0, n - 1}:
            raw.seek(int(found[i]))
            row = np.frombuffer(raw.read(row_bytes), ds.dtype).reshape(ds.shape[1:])
            if not np.array_equal(row, ds[i], equal_nan=True):
                return None
    return found


def pread_row(fd: int, out: np.ndarray, offset: int) -> None:
    """Read one row found by `row_offsets` into the contiguous array `out`."""
    got = os.preadv(fd, [memoryview(out).cast("B")], offset)
    if got != out.nbytes:
        raise OSError(errno.EIO, f"short read at byte {offset} (file truncated after opening?)")


def block_bytes(start: int, stop: int, arrays: Mapping[str, ArraySpec]) -> int:
    """Disk space a block file takes (its rows, CRCs and counter; HDF5's few kB not counted)."""
    return (stop - start) * (sum(spec.row_bytes for spec in arrays.values()) + 4) + 8


def row_checksums(rows: Mapping[str, np.ndarray], arrays: Mapping[str, ArraySpec]) -> np.ndarray:
    """CRC-32 of each row's bytes, over the arrays in their declared order."""
    count = len(next(iter(rows.values())))
    checks = np.zeros(count, dtype=np.uint32)
    for name in arrays:
        values = rows[name]
        for i in range(count):
            checks[i] = zlib.crc32(values[i].tobytes(), int(checks[i]))
    return checks


class Block:
    """Rows [start, stop) of a cache in their own file."""

    def __init__(self, path: Path, start: int, stop: int, arrays: Mapping[str, ArraySpec], config_fingerprint: str):
        self.path, self.start, self.stop = path, start, stop
        self.arrays = dict(arrays)
        if path.exists() and self._layout() != BLOCK_LAYOUT:
            path.unlink()  # written by an older version without CRCs: its rows are recomputed
        if not path.exists():
            self._create(config_fingerprint)
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("fingerprint") != config_fingerprint:
                raise UserError(f"{path}: block written by another configuration; delete {path.parent} to start over")
            self.offsets = {name: f[name].id.get_offset() for name in (*self.arrays, CHECKS, PROGRESS)}
        with write_errors(path):
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.rows_done = min(int(np.frombuffer(self._read(PROGRESS, 0, 8), "<i8")[0]), stop - start)

    def _layout(self) -> int | None:
        try:
            with h5py.File(self.path, "r", locking=False) as f:
                return int(f.attrs.get("layout", 1))
        except (OSError, KeyError):
            return None  # unreadable (e.g. cut short): recreated

    def _create(self, config_fingerprint: str) -> None:
        tmp = self.path.with_name(self.path.name + ".creating")
        size = block_bytes(self.start, self.stop, self.arrays)
        with write_errors(self.path, needed=size):
            try:
                with h5py.File(tmp, "w", track_order=False) as f:
                    for name, spec in self.arrays.items():
                        _create_contiguous(f, name, (self.stop - self.start, *spec.row_shape), spec.stored)
                    _create_contiguous(f, CHECKS, (self.stop - self.start,), np.dtype("<u4"))
                    _create_contiguous(f, PROGRESS, (1,), np.dtype("<i8"))
                    f.attrs["fingerprint"] = config_fingerprint
                    f.attrs["start"] = self.start
                    f.attrs["stop"] = self.stop
                    f.attrs["layout"] = BLOCK_LAYOUT
                    progress = f[PROGRESS].id.get_offset()
                fd = os.open(tmp, os.O_RDWR | os.O_CLOEXEC)
                try:
                    _pwrite_all(fd, np.zeros(1, "<i8").tobytes(), progress)
                    try:  # reserve the space now: a full disk stops the run before it computes anything
                        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
                    except OSError as error:
                        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                            raise
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def _read(self, name: str, offset: int, size: int) -> bytes:
        return _pread_all(self.fd, size, self.offsets[name] + offset)

    @property
    def finished(self) -> bool:
        return self.start + self.rows_done >= self.stop

    def write(self, rows: Mapping[str, np.ndarray]) -> None:
        """Append rows after the ones already done; counted only once they are durably on disk."""
        count = len(next(iter(rows.values())))
        lo = self.rows_done
        if lo + count > self.stop - self.start:
            raise ValueError(f"{self.path}: {count} rows after {lo} overflow the block")
        stored = {}
        for name, spec in self.arrays.items():
            values = np.ascontiguousarray(rows[name], dtype=spec.stored)
            if values.shape != (count, *spec.row_shape):
                raise ValueError(f"{name}: rows of shape {values.shape}, expected {(count, *spec.row_shape)}")
            stored[name] = values
        checks = row_checksums(stored, self.arrays)
        with write_errors(self.path):
            for name, spec in self.arrays.items():
                _pwrite_all(self.fd, stored[name], self.offsets[name] + lo * spec.row_bytes)
            _pwrite_all(self.fd, checks.astype("<u4"), self.offsets[CHECKS] + lo * 4)
            os.fsync(self.fd)  # the rows first ...
            _pwrite_all(self.fd, np.array([lo + count], "<i8"), self.offsets[PROGRESS])
            os.fsync(self.fd)  # ... then the count that says they are there
        self.rows_done = lo + count

    def read(self, name: str, lo: int, hi: int) -> np.ndarray:
        spec = self.arrays[name]
        raw = self._read(name, (lo - self.start) * spec.row_bytes, (hi - lo) * spec.row_bytes)
        return np.frombuffer(raw, dtype=spec.stored).reshape(hi - lo, *spec.row_shape).astype(spec.dtype, copy=False)

    def checksums(self, lo: int, hi: int) -> np.ndarray:
        return np.frombuffer(self._read(CHECKS, (lo - self.start) * 4, (hi - lo) * 4), "<u4")

    def first_bad_row(self, chunk_rows: int = 256) -> int | None:
        """The first counted row (block-relative) whose bytes do not match its CRC, or None."""
        for lo in range(self.start, self.start + self.rows_done, chunk_rows):
            hi = min(lo + chunk_rows, self.start + self.rows_done)
            got = row_checksums({name: self.read(name, lo, hi) for name in self.arrays}, self.arrays)
            bad = np.flatnonzero(got != self.checksums(lo, hi))
            if len(bad):
                return lo - self.start + int(bad[0])
        return None

    def rewind(self, rows_done: int) -> None:
        """Count only the first `rows_done` rows (the others are computed again)."""
        with write_errors(self.path):
            _pwrite_all(self.fd, np.array([rows_done], "<i8"), self.offsets[PROGRESS])
            os.fsync(self.fd)
        self.rows_done = rows_done

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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
            with write_errors(self.parts):
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
                write_json_atomic(manifest, {"fingerprint": self.fingerprint, "config": self.config})

    def block_ranges(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.block_rows, self.num_rows)) for s in range(0, self.num_rows, self.block_rows)]

    def block_path(self, index: int) -> Path:
        return self.parts / f"block-{index:06d}.h5"

    def open_blocks(self, rank: int, world: int, verify: bool = False) -> list[Block]:
        """This rank's blocks, created (with their space reserved) where missing.

        The space of every missing block is checked first, so a disk too small for the run stops
        it at once, naming what it needs. With `verify`, a block taken over part-way has its
        counted rows checked against their CRCs and is rewound to the first row that fails.
        """
        mine = [(i, start, stop) for i, (start, stop) in enumerate(self.block_ranges()) if i % world == rank]
        missing = sum(block_bytes(s, e, self.arrays) for i, s, e in mine if not self.block_path(i).exists())
        free = free_bytes(self.parts)
        if missing and free is not None and free < missing:
            raise UserError(f"{self.parts}: no space left on the device (the rows need about {human_bytes(missing)}, "
                            f"{human_bytes(free)} free); free some space and rerun to continue")
        blocks = []
        try:
            for i, start, stop in mine:
                block = Block(self.block_path(i), start, stop, self.arrays, self.fingerprint)
                blocks.append(block)
                if verify and 0 < block.rows_done < stop - start:
                    bad = block.first_bad_row()
                    if bad is not None:
                        block.rewind(bad)
        except BaseException:
            for block in blocks:
                block.close()
            raise
        return blocks

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
        needed = self.num_rows * sum(spec.row_bytes for spec in self.arrays.values())
        try:
            unfinished = [b.path.name for b in blocks if not b.finished]
            if unfinished:
                raise RuntimeError(f"cannot merge: unfinished blocks {unfinished[:3]}")
            free = free_bytes(tmp.parent)
            if compression is None and free is not None and free < needed:
                raise UserError(f"{tmp}: no space left on the device (the merged cache needs about "
                                f"{human_bytes(needed)}, {human_bytes(free)} free); free some space and rerun "
                                f"to continue (the computed rows in {self.parts} are kept)")
            crcs = np.zeros(self.num_rows, dtype=np.uint32)  # recomputed from the bytes as they are copied
            with write_errors(tmp, needed=needed if compression is None else None):
                try:
                    # No chunk cache: HDF5 writes each row as it is given, so a failed write raises
                    # here instead of being lost when the cache is flushed on close.
                    with h5py.File(tmp, "w", rdcc_nbytes=0) as f:
                        for name, spec in self.arrays.items():
                            ds = f.create_dataset(name, shape=(self.num_rows, *spec.row_shape), dtype=spec.dtype,
                                                  chunks=(1, *spec.row_shape), track_times=False,
                                                  compression=compression if spec.row_shape else None)
                            for block in blocks:
                                for lo in range(block.start, block.stop, chunk_rows):
                                    hi = min(lo + chunk_rows, block.stop)
                                    values = block.read(name, lo, hi)
                                    for k in range(hi - lo):
                                        crcs[lo + k] = zlib.crc32(values[k].tobytes(), int(crcs[lo + k]))
                                    if observe is not None:
                                        observe(name, values)
                                    ds[lo:hi] = values
                        self._check_rows(blocks, crcs)
                        for name, values in (extra or {}).items():
                            dtype = h5py.string_dtype() if values.dtype == object else values.dtype
                            f.create_dataset(name, data=values, dtype=dtype, track_times=False)
                        for key, value in (attrs() if callable(attrs) else attrs).items():
                            f.attrs[key] = value
                        f.attrs["format_version"] = FORMAT_VERSION
                        f.attrs["config"] = json.dumps(self.config, sort_keys=True, default=str)
                        f.attrs["complete"] = True
                        f.flush()  # raises on a failed write, where closing would not
                    fsync_file(tmp)
                    os.replace(tmp, self.out)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
        finally:
            for block in blocks:
                block.close()
        shutil.rmtree(self.parts, ignore_errors=True)

    def _check_rows(self, blocks: list[Block], crcs: np.ndarray) -> None:
        """Refuse to merge rows whose bytes differ from what was written: rewind their blocks."""
        damaged = []
        for block in blocks:
            bad = np.flatnonzero(crcs[block.start:block.stop] != block.checksums(block.start, block.stop))
            if len(bad):
                block.rewind(int(bad[0]))
                damaged.append(f"{block.path.name} from row {block.start + int(bad[0])}")
        if damaged:
            raise UserError(f"{self.parts}: rows do not match their checksums ({', '.join(damaged[:3])}), "
                            f"so a write was lost; they are computed again when you rerun to continue")


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
