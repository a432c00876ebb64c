"""Time to open an image folder: the first listing (verify every file) vs a later one (index reused).

    python benchmarks/folder_index.py [--images 20000] [--size 64] [--json out.json]
    python benchmarks/folder_index.py --images 2000    # a smoke run

Writes `--images` small JPEGs (`--size` px, random noise, 100 class folders like ImageNet's) to
a temporary folder, reads them once so the page cache holds them (this measures listing and
verifying, not the disk), then opens the folder the way every command does (`ImageFolder`)
three times with a fresh index folder:

* cold: no index yet, every file is opened and verified (what every command did before the index);
* warm: the index holds every file, only the listing (one stat per file) remains;
* one changed: a single file rewritten since, so only it is verified again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sendvae_cli.data.folder import ImageFolder


def write_folder(root: Path, images: int, size: int, classes: int = 100) -> None:
    rng = np.random.default_rng(0)
    tiles = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(16)]
    for i in range(images):
        folder = root / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        tiles[i % 16].save(folder / f"{i:07d}.JPEG", quality=90)


def timed_open(root: Path) -> tuple[float, ImageFolder]:
    start = time.perf_counter()
    folder = ImageFolder(root, 16)
    return time.perf_counter() - start, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sendvae-folder-index-"))
    try:
        data = scratch / "data"
        write_folder(data, args.images, args.size)
        for path in data.rglob("*.JPEG"):  # into the page cache
            path.read_bytes()
        os.environ["SENDVAE_CACHE"] = str(scratch / "cache")
        cold, first = timed_open(data)
        warm, second = timed_open(data)
        changed = next(iter(sorted(data.rglob("*.JPEG"))))
        Image.fromarray(np.zeros((args.size, args.size, 3), np.uint8)).save(changed)
        os.utime(changed, ns=(1, 1))
        one, third = timed_open(data)
        index_bytes = first.index_location.stat().st_size
        figures = {
            "images": args.images, "size": args.size, "cpus": os.cpu_count(),
            "cold_s": round(cold, 3), "warm_s": round(warm, 3), "one_changed_s": round(one, 3),
            "verified": [first.verified, second.verified, third.verified],
            "speedup": round(cold / warm, 1), "index_bytes": index_bytes,
        }
        print(f"{args.images:,} JPEGs ({args.size} px), {os.cpu_count()} CPUs, page cache warm")
        print(f"  cold (verify every file):   {cold:7.2f} s  verified {first.verified:,}")
        print(f"  warm (index reused):        {warm:7.2f} s  verified {second.verified:,}  ({cold / warm:.1f}x faster)")
        print(f"  one file changed:           {one:7.2f} s  verified {third.verified:,}")
        print(f"  index: {index_bytes / 1e6:.2f} MB ({index_bytes / args.images:.0f} bytes per image)")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
