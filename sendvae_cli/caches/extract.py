"""`sendvae extract`: teacher patch tokens of every image into a resumable HDF5 cache.

Output layout (see docs/formats.md): `tokens` (N, T, D) float16 chunked one row per chunk,
`labels` (N,) int64, `rows` (N,) the row identifiers, and attributes describing the teacher,
token grid, resolution, data source and row order. Writing goes through `h5rows.RowCache`,
which makes the run resumable and crash-safe and independent of the number of processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sendvae_cli import distributed
from sendvae_cli.caches import encode_rows
from sendvae_cli.caches.h5rows import ArraySpec, RowCache
from sendvae_cli.data.source import ImageSource
from sendvae_cli.distributed import autocast_for
from sendvae_cli.errors import UserError
from sendvae_cli.locks import hold_output_lock
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


def extract(source: ImageSource, spec, out: Path, options: ExtractOptions) -> dict[str, Any]:
    """Extract tokens of every row of `source` into `out`; returns a summary.

    Rank 0 holds the lock of `out` throughout: a second run on the same output stops at once."""
    dist = distributed.init(options.device)
    with hold_output_lock(Path(out), enabled=dist.is_main):
        return _extract(source, spec, Path(out), options, dist)


def _extract(source: ImageSource, spec, out: Path, options: ExtractOptions, dist) -> dict[str, Any]:
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

    resolved = dict(config, token_grid=[rows_, cols_], width=spec.width, batch_size=batch_size, world_size=dist.world)
    if encode_rows.already_complete(cache, dist, show, resolved):
        return dict(summary, computed=0)

    teacher = build_teacher(spec, options, dist.device)
    if teacher.width != spec.width or teacher.token_grid(source.resolution) != (rows_, cols_):
        raise RuntimeError(f"teacher {spec.name!r} built with width {teacher.width}, its spec says {spec.width}")
    encode_rows.prepare(cache, dist)

    def step(x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        with autocast_for(dist.device, options.precision):
            tokens = teacher(x)
        return {"tokens": tokens.to(torch.float16).cpu().numpy(), "labels": labels.numpy().astype(np.int64)}

    computed = encode_rows.fill(cache, source, dist, step, batch_size=batch_size, workers=options.workers,
                                label=f"extract {spec.name}", show=show)
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
    encode_rows.finish(
        cache, dist, attrs,
        extra={"rows": np.array(source.row_ids(), dtype=object)} if dist.is_main else None,
        resolved=resolved,
        message=f"wrote {out}: tokens {len(source)} x {rows_ * cols_} x {teacher.width} float16", show=show,
    )
    return dict(summary, computed=computed)

