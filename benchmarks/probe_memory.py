"""Probe memory: `fit_probe` on a 200,000 x 8,192 float16 feature cache (3.3 GB) streamed from HDF5.

    python benchmarks/probe_memory.py [--rows 200000] [--dim 8192] [--memory-gb 0.5] [--epochs 3] [--dir D]

Writes a CelebA-sized cache with `probe_time.write_cache` (features a linear function of 40
attributes plus noise, splits 80/10/10) unless `--dir` already holds one, then fits the probe with `memory_gb` far below the
table's size and reports the process's peak resident memory before and after the probe (the
probe's own footprint is the difference), seconds per epoch and the time of the first pass.
Run it in a fresh process: peak RSS only ever grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import h5py

from probe_time import write_cache  # the same synthetic cache, written in row blocks
from sendvae_cli.eval.linear_probe import ProbeSettings, fit_probe


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--attributes", type=int, default=40)
    parser.add_argument("--memory-gb", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3, help="a few epochs show the steady state")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sendvae-probe-memory"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"features-{args.rows}x{args.dim}.h5"
    if not path.exists():
        started = time.perf_counter()
        write_cache(path, args.rows, args.dim, args.attributes)
        print(f"wrote {path} in {time.perf_counter() - started:.0f} s (rerun to measure in a clean process)")
        return
    with h5py.File(path, "r") as f:
        attributes, splits = f["attributes"][:], f["split"][:]
        before = peak_rss_mb()
        started = time.perf_counter()
        result = fit_probe(f["features"], attributes, splits,
                           ProbeSettings(memory_gb=args.memory_gb, epochs=args.epochs, patience=args.epochs))
        total = time.perf_counter() - started
    after = peak_rss_mb()
    s = result.seconds
    figures = {
        "rows": args.rows, "dim": args.dim, "table_gb": args.rows * args.dim * 2 / 1e9, "memory_gb": args.memory_gb,
        "in_memory": result.in_memory, "slab_rows": result.slab_rows, "epochs_run": result.epochs_run,
        "peak_rss_mb_before_probe": round(before), "peak_rss_mb_after_probe": round(after),
        "probe_rss_mb": round(after - before), "first_pass_s": s["load"] + s["stats"],
        "train_s_per_epoch": s["train"] / result.epochs_run, "total_s": total,
        "test_macro_f1": result.metrics["macro_f1"],
    }
    print(f"{args.rows} x {args.dim} float16 ({figures['table_gb']:.1f} GB), memory_gb {args.memory_gb}: "
          f"streamed={not result.in_memory}, slabs of {result.slab_rows} rows; peak RSS {before:.0f} MB before the "
          f"probe, {after:.0f} MB after (+{after - before:.0f} MB); first pass {figures['first_pass_s']:.1f} s, "
          f"{figures['train_s_per_epoch']:.1f} s/epoch, {total:.0f} s for {result.epochs_run} epochs")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
