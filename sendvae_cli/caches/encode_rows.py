"""Run a model over every row of an image source into a `RowCache`: what `extract` and
`cache-latents` share.

The shape of a run, for any per-batch computation `step(x, labels) -> {array name: rows}`:

1. `already_complete`: a finished output of the same configuration means nothing to do (and an
   output of another configuration is refused, see `RowCache.existing_complete`);
2. `prepare`: rank 0 creates the parts folder and its manifest, every rank waits;
3. `fill`: each rank computes the batches still missing from its blocks. Block files are opened
   to read where they stand and closed again *before* the DataLoader workers start (forked
   workers would otherwise inherit the open files and their locks, and could outlive a killed
   run, blocking the rerun); then reopened, and written on a background thread so the next
   forward pass need not wait for the disk;
4. `finish`: every rank waits, rank 0 merges the blocks into OUT (with optional compression and
   a streaming hook over the merged rows) and writes the resolved configuration beside it.

Images reach `step` as float [-1, 1] NCHW on the run's device (decoded as uint8 in the workers).
"""

from __future__ import annotations

import queue
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from sendvae_cli.caches.h5rows import RowCache, batches
from sendvae_cli.data.source import ImageSource
from sendvae_cli.distributed import Dist
from sendvae_cli.images import to_model_range
from sendvae_cli.io import write_errors, write_json_atomic
from sendvae_cli.outcome import set_resume
from sendvae_cli.progress import info, progress_bar
from sendvae_cli.stopping import Interrupted, ignore_stop_signals, stop_on_signals

Step = Callable[[torch.Tensor, torch.Tensor], Mapping[str, np.ndarray]]


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


def side_file(cache: RowCache) -> Path:
    """`OUT.json`: the resolved configuration of the run that wrote OUT."""
    return cache.out.with_name(cache.out.name + ".json")


def already_complete(cache: RowCache, dist: Dist, show: bool, resolved: Mapping[str, Any] | None = None) -> bool:
    """True (after tidying a stale parts folder, and restoring a missing `OUT.json` from this
    run's configuration) when OUT is finished by this configuration."""
    if not cache.existing_complete():
        return False
    if dist.is_main and cache.parts.exists():
        shutil.rmtree(cache.parts, ignore_errors=True)
    if dist.is_main and resolved is not None and not side_file(cache).exists():
        write_json_atomic(side_file(cache), dict(resolved))
    info(f"{cache.out} is already complete ({cache.num_rows} rows); nothing to do", show)
    return True


def prepare(cache: RowCache, dist: Dist) -> None:
    if dist.is_main:
        with write_errors(cache.out.parent):
            cache.out.parent.mkdir(parents=True, exist_ok=True)
        cache.prepare(is_main=True)
    dist.barrier()


def fill(cache: RowCache, source: ImageSource, dist: Dist, step: Step, *, batch_size: int, workers: int,
         label: str, show: bool) -> int:
    """Compute the rows still missing from this rank's blocks; returns how many were computed."""
    blocks_in_all = len(cache.block_ranges())
    if blocks_in_all < dist.world:  # blocks are the unit of work: the rest of the processes idle
        info(f"{cache.out}: {cache.num_rows} rows make {blocks_in_all} block(s) of --block-rows {cache.block_rows}, "
             f"so only {blocks_in_all} of the {dist.world} processes have work; --block-rows "
             f"{-(-cache.num_rows // dist.world)} would give each a share", show)
    set_resume("rerun the same command: the rows written are kept")
    blocks = cache.open_blocks(dist.rank, dist.world, verify=True)
    todo = [(block.path, rows) for block, rows in batches(blocks, batch_size)]
    mine = sum(b.stop - b.start for b in blocks)
    done = sum(b.rows_done for b in blocks)
    for block in blocks:
        block.close()
    if not todo:
        return 0
    if done:
        info(f"{cache.out}: continuing with rows {done + 1}–{mine} of {mine}"
             + (f" (this process's share of {cache.num_rows})" if dist.world > 1 else ""), show)
    loader = torch.utils.data.DataLoader(
        source,
        batch_sampler=[rows for _, rows in todo],
        num_workers=workers,
        pin_memory=dist.device.type == "cuda",
        worker_init_fn=ignore_stop_signals,  # the main process finishes the batch in hand, then stops
    )
    batches_in = iter(loader)
    open_ = {b.path: b for b in cache.open_blocks(dist.rank, dist.world)}
    writer = BackgroundWriter()
    computed = 0
    with stop_on_signals() as stop:
        try:
            if dist.world > 1:
                label += f" (rank 0 of {dist.world})"
            with progress_bar(label, total=mine, completed=done, show=show) as bar, torch.inference_mode():
                for (path, rows), (images, labels) in zip(todo, batches_in):
                    x = to_model_range(images.to(dist.device, non_blocking=True))
                    writer.put(open_[path], step(x, labels))
                    computed += len(rows)
                    bar.advance(len(rows))
                    if stop.requested:
                        break
        finally:
            try:
                writer.close()  # every computed batch reaches its block before the run stops
            finally:
                for block in open_.values():
                    block.close()
        if stop.requested and done + computed < mine:
            raise Interrupted(f"{cache.out}: {stop.name} received; stopped after row {done + computed} of {mine}, "
                              f"the rows written are kept. Rerun the same command to continue", stop.signum)
    return computed


def finish(cache: RowCache, dist: Dist, attrs, *, extra: Mapping[str, np.ndarray] | None = None,
           resolved: Mapping[str, Any] | None = None, message: str = "", show: bool = True,
           **merge_options) -> None:
    """Wait for every rank; rank 0 merges into OUT and writes `OUT.json` (the resolved configuration)."""
    dist.barrier()
    if dist.is_main:
        if resolved is not None:  # before OUT appears, so that OUT never exists without it
            write_json_atomic(side_file(cache), dict(resolved))
        cache.merge(attrs, extra=extra, **merge_options)
        if message:
            info(message, show)
    dist.barrier()
