"""`sendvae extract`: teacher patch tokens of every image into a resumable HDF5 cache.

Output layout (see docs/formats.md): `tokens` (N, T, D) float16 chunked one row per chunk,
`labels` (N,) int64, `rows` (N,) the row identifiers, and attributes describing the teacher,
token grid, resolution, data source and row order. Writing goes through `h5rows.RowCache`,
which makes the run resumable and crash-safe and independent of the number of processes.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from sendvae_cli import distributed
from sendvae_cli.data.h5rows import ArraySpec, RowCache, batches
from sendvae_cli.data.source import ImageSource, to_model_range
from sendvae_cli.errors import UserError
from sendvae_cli.progress import info, progress_bar
from sendvae_cli.teachers.base import TOKEN_STRIDE

PRODUCER = "sendvae extract"


@dataclass
class ExtractOptions:
    batch_size: int | None = None  # None: 64 on GPU, 16 on CPU (large CPU batches thrash the cache)
    workers: int = 4
    teacher_weights: Path | None = None
    random_weights: bool = False
    seed: int = 0
    device: str | None = None
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    block_rows: int = 1024
    quiet: bool = False


def weights_identity(spec, options: ExtractOptions) -> str:
    if options.teacher_weights is not None:
        path = Path(options.teacher_weights).expanduser().resolve()
        size = path.stat().st_size if path.is_file() else "folder"
        return f"file:{path}:{size}"
    if options.random_weights:
        return f"random(seed={options.seed})"
    return spec.source or "default"


def build_teacher(spec, options: ExtractOptions, device: torch.device):
    # Random weights are seeded so that a resumed run continues with the same teacher.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        teacher = spec.build(weights=options.teacher_weights, random_weights=options.random_weights)
    return teacher.to(device)


class BackgroundWriter:
    """Writes finished batches on a thread so the next forward pass need not wait for disk."""

    def __init__(self, depth: int = 2):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                block, rows = item
                try:
                    block.write(rows)
                except BaseException as error:  # noqa: BLE001 - re-raised on the main thread
                    self.error = error

    def put(self, block, rows) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((block, rows))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def extract(source: ImageSource, spec, out: Path, options: ExtractOptions) -> dict[str, Any]:
    """Extract tokens of every row of `source` into `out`; returns a summary."""
    out = Path(out)
    dist = distributed.init(options.device)
    show = dist.is_main and not options.quiet
    batch_size = options.batch_size or (64 if dist.device.type == "cuda" else 16)
    config = {
        "producer": PRODUCER,
        "teacher": spec.name,
        "teacher_weights": weights_identity(spec, options),
        "resolution": source.resolution,
        "source": source.describe(),
        "row_order_sha256": source.row_order_sha256(),
        "dtype": "float16",
    }
    # The cache layout follows from the spec, so a finished or foreign output is recognised
    # before the (possibly large) teacher is built.
    if source.resolution % TOKEN_STRIDE:
        raise UserError(f"--resolution {source.resolution}: expected a multiple of {TOKEN_STRIDE}")
    rows_, cols_ = source.resolution // TOKEN_STRIDE, source.resolution // TOKEN_STRIDE
    arrays = {"tokens": ArraySpec((rows_ * cols_, spec.width), "float16"), "labels": ArraySpec((), "int64")}
    cache = RowCache(out, len(source), arrays, config, block_rows=options.block_rows)
    summary = {"out": str(out), "rows": len(source), "tokens": rows_ * cols_, "width": spec.width}

    if cache.existing_complete():
        if dist.is_main and cache.parts.exists():
            shutil.rmtree(cache.parts, ignore_errors=True)
        info(f"{out} is already complete ({len(source)} rows); nothing to do", show)
        return dict(summary, computed=0)

    teacher = build_teacher(spec, options, dist.device)
    if teacher.width != spec.width or teacher.token_grid(source.resolution) != (rows_, cols_):
        raise RuntimeError(f"teacher {spec.name!r} built with width {teacher.width}, its spec says {spec.width}")

    if dist.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        cache.prepare(is_main=True)
    dist.barrier()

    # Read where each block stands, then start the DataLoader workers with no cache file open:
    # forked workers would otherwise inherit the files (and their locks) and could outlive a
    # killed run, blocking the rerun.
    blocks = cache.open_blocks(dist.rank, dist.world)
    todo = [(block.path, rows) for block, rows in batches(blocks, batch_size)]
    mine = sum(b.stop - b.start for b in blocks)
    done = sum(b.rows_done for b in blocks)
    for block in blocks:
        block.close()
    computed = 0
    if todo:
        loader = torch.utils.data.DataLoader(
            source,
            batch_sampler=[rows for _, rows in todo],
            num_workers=options.workers,
            pin_memory=dist.device.type == "cuda",
        )
        batches_in = iter(loader)
        blocks = {b.path: b for b in cache.open_blocks(dist.rank, dist.world)}
        writer = BackgroundWriter()
        try:
            label = f"extract {spec.name}" + (f" (rank 0 of {dist.world})" if dist.world > 1 else "")
            with progress_bar(label, total=mine, completed=done, show=show) as bar:
                for (path, rows), (images, labels) in zip(todo, batches_in):
                    x = to_model_range(images.to(dist.device, non_blocking=True))
                    with autocast_for(dist.device, options.precision):
                        tokens = teacher(x)
                    writer.put(blocks[path], {
                        "tokens": tokens.to(torch.float16).cpu().numpy(),
                        "labels": labels.numpy().astype(np.int64),
                    })
                    computed += len(rows)
                    bar.advance(len(rows))
        finally:
            try:
                writer.close()
            finally:
                for block in blocks.values():
                    block.close()

    dist.barrier()
    if dist.is_main:
        attrs = {
            "producer": PRODUCER,
            "teacher": spec.name,
            "teacher_family": spec.family,
            "teacher_width": teacher.width,
            "patch_size": teacher.patch_size,
            "token_grid": [rows_, cols_],
            "resolution": source.resolution,
            "source": json.dumps(source.describe(), sort_keys=True),
            "row_order_sha256": config["row_order_sha256"],
            "teacher_weights": config["teacher_weights"],
        }
        row_ids = np.array(source.row_ids(), dtype=object)
        cache.merge(attrs, extra={"rows": row_ids})
        resolved = out.with_name(out.name + ".json")
        tmp = resolved.with_name(resolved.name + ".tmp")
        tmp.write_text(json.dumps(dict(config, token_grid=[rows_, cols_], width=teacher.width,
                                       batch_size=batch_size, world_size=dist.world), indent=2, default=str))
        os.replace(tmp, resolved)
        info(f"wrote {out}: tokens {len(source)} x {rows_ * cols_} x {teacher.width} float16", show)
    dist.barrier()
    return dict(summary, computed=computed)


def read_tokens(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """All tokens of a finished cache and its attributes (small caches, tests and tools)."""
    with h5py.File(path, "r") as f:
        return f["tokens"][:], dict(f.attrs)
