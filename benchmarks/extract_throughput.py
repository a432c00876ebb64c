"""`sendvae extract` throughput against the bare teacher forward on the same batches.

    python benchmarks/extract_throughput.py [--teacher dinov2-s] [--images 256] [--resolution 256]

The bare forward runs the teacher on batches already decoded in memory; the extract run is
the whole pipeline (DataLoader workers rendering/decoding, forward, float16 conversion,
crash-safe HDF5 writes, final merge) on the same images and batch size. The ratio says how much
the pipeline costs on top of the model. FLOPs per image come from torch's FlopCounterMode, so the
achieved GFLOP/s can be set against the machine's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.flop_counter import FlopCounterMode

from sendvae_cli.caches.extract import ExtractOptions, extract
from sendvae_cli.data.open import open_images
from sendvae_cli.images import to_model_range
from sendvae_cli.registry import get_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="dinov2-s")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    registry = get_registry()
    spec = registry.teacher(args.teacher)
    source = open_images("shapes", registry=registry, resolution=args.resolution, num_images=args.images)
    options = ExtractOptions(batch_size=args.batch_size, workers=args.workers, random_weights=True,
                             device=args.device, quiet=True)
    from sendvae_cli.caches.extract import build_teacher
    from sendvae_cli.distributed import autocast_for
    from sendvae_cli.distributed import pick_device

    device = pick_device(args.device)
    teacher = build_teacher(spec, options, device)
    batches = [torch.stack([source[i][0] for i in range(s, min(s + args.batch_size, len(source)))])
               for s in range(0, len(source), args.batch_size)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as counter:
        teacher(to_model_range(batches[0][:1].to(device)))
    flops_per_image = counter.get_total_flops()

    # Warm-up, then the bare forward: model time only.
    with autocast_for(device, options.precision):
        teacher(to_model_range(batches[0].to(device)))
    bare = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        for batch in batches:
            with autocast_for(device, options.precision):
                teacher(to_model_range(batch.to(device)))
        sync()
        bare.append(args.images / (time.perf_counter() - t0))

    pipeline = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            extract(source, spec, Path(tmp) / "f.h5", options)
            pipeline.append(args.images / (time.perf_counter() - t0))

    result = {
        "teacher": spec.name, "images": args.images, "resolution": args.resolution, "batch_size": args.batch_size,
        "workers": args.workers, "device": str(device), "torch_threads": torch.get_num_threads(),
        "gflops_per_image": flops_per_image / 1e9,
        "bare_images_per_s": max(bare), "extract_images_per_s": max(pipeline),
        "ratio": max(pipeline) / max(bare),
        "bare_gflops_per_s": max(bare) * flops_per_image / 1e9,
    }
    for key, value in result.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
