"""`sendvae fid` throughput: images/s through the whole pipeline, and what 5,000 / 50,000 images cost.

    python benchmarks/fid_throughput.py [--images 5000] [--resolution 256] [--device auto] [--threads N]
                                        [--extractors inception,tv-mobilenet-v2,dinov2-l] [--no-png]

Writes N generated `shapes` images at the given resolution as an ADM `.npz` and a PNG folder, then
measures, on the same machine:

- bare:      the Inception forward alone on decoded uint8 batches (model time only, <= 128 images);
- npz:       `evaluate()` with the .npz as SAMPLES against saved reference statistics (streamed
             memory-mapped reads, forward, float64 moments, IS sums; FID math and P/R included);
- decode:    PNG folder decoding through the DataLoader alone (what feeds a GPU from a folder;
             --no-png skips writing the folder and this figure);
- fid_math:  the two Fréchet distances (2048-d and 2023-d, float64 eigh) on full-rank statistics;
- p/r:       precision/recall on N x N features (quadratic in N; extrapolated to 50k x 10k).

Per extractor (`--extractors`, default all three), the same pipeline run (`evaluate()` on the
`.npz` against saved statistics of that extractor's width) is set against its bare forward: the
extractor called on uint8 batches already in memory (Inception's resize is inside its network, a
teacher's 224 px resize inside `TeacherExtractor`). `ratio` = pipeline / bare (goal >= 0.9), and
`seconds_for_50000_images` = 50,000 images at the pipeline's rate (goal: well under two minutes on
an H100/H200).

The weights are random (the release files cannot be downloaded here): the networks and their
FLOPs are the real ones. From the FLOPs per image it prints what a GPU needs for 50,000 images at an
assumed sustained float32 rate (no TF32), to be replaced by a measurement on a lent GPU
(`--device cuda`). With fewer images than 5,000 the figures for 5,000 / 50,000 are extrapolated
linearly from the steady-state rate and say so.
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

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from sendvae_cli.data.shapes import ShapesSource
from sendvae_cli.eval.fid import FidOptions, evaluate
from sendvae_cli.eval.frechet import Gaussian, frechet_distance
from sendvae_cli.eval.extractors import open_extractor
from sendvae_cli.eval.inception import InceptionFeatures, random_inception_weights
from sendvae_cli.eval.inputs import FolderImages, ReferenceStats, save_stats
from sendvae_cli.eval.metrics import precision_recall

H100_FP32_SUSTAINED_TFLOPS = 25.0  # assumption: ~40% of the H100 SXM float32 (non-tensor) peak of ~67


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--pr-images", type=int, default=2000, help="features per side for the P/R timing")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG folder (its writing and decoding)")
    parser.add_argument("--extractors", default="inception,tv-mobilenet-v2,dinov2-l",
                        help="comma-separated extractors to time (inception and/or teacher names)")
    parser.add_argument("--teacher-images", type=int, default=64,
                        help="images through the pipeline for each teacher extractor (dinov2-l costs ~2 s/image on 2 cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sendvae_cli.distributed import pick_device

    device = pick_device(args.device)
    batch_size = args.batch_size or (250 if device.type == "cuda" else 32)
    n = args.images

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        source = ShapesSource(n, args.resolution, seed=0)
        pixels = np.empty((n, args.resolution, args.resolution, 3), np.uint8)
        (tmp / "png").mkdir()
        for i in range(n):
            pixels[i] = source[i][0].permute(1, 2, 0).numpy()
            if not args.no_png:
                Image.fromarray(pixels[i]).save(tmp / "png" / f"{i:06d}.png")
        np.savez(tmp / "samples.npz", arr_0=pixels)
        print(f"wrote {n} images at {args.resolution} px in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

        weights = random_inception_weights(tmp / "inception.pth")
        extractor = InceptionFeatures.load(weights, device)
        names = [n for n in args.extractors.split(",") if n]
        per_extractor = {}
        for name in names:
            if name != "inception":
                per_extractor[name] = time_teacher(name, pixels, tmp, device, args)
        batches = [torch.from_numpy(pixels[s : s + batch_size]).permute(0, 3, 1, 2).contiguous()
                   for s in range(0, n, batch_size)]

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        with FlopCounterMode(display=False) as counter:
            extractor(batches[0][:1])
        flops_per_image = counter.get_total_flops()

        extractor(batches[0][: min(4, len(batches[0]))])  # warm-up
        bare_batches = batches[: max(1, 128 // batch_size)]  # model time is steady: a few batches suffice
        sync()
        t0 = time.perf_counter()
        for batch in bare_batches:
            extractor(batch)
        sync()
        bare = sum(len(b) for b in bare_batches) / (time.perf_counter() - t0)

        # Reference statistics from saved features (full rank, as real references are).
        rng = np.random.default_rng(0)
        ref_pool = rng.normal(size=(4096, 2048))
        ref_spatial = rng.normal(size=(4096, 2023))
        reference = ReferenceStats(Gaussian(ref_pool.mean(0), np.cov(ref_pool, rowvar=False), 4096),
                                   Gaussian(ref_spatial.mean(0), np.cov(ref_spatial, rowvar=False), 4096),
                                   ref_pool[:1000].astype(np.float32), {"weights_sha256": extractor.sha256})
        save_stats(tmp / "ref.npz", reference, {"weights_sha256": extractor.sha256, "producer": "benchmark"})

        t0 = time.perf_counter()
        fd = frechet_distance(reference.pool, reference.pool) + frechet_distance(reference.spatial, reference.spatial)
        fid_math = time.perf_counter() - t0
        assert fd < 1e-6

        t0 = time.perf_counter()
        result = evaluate(FidOptions(samples=tmp / "samples.npz", ref=tmp / "ref.npz", batch_size=batch_size,
                                     device=str(device), json_out=tmp / "out.json", quiet=True, cache=False),
                          extractor=extractor)
        npz_total = time.perf_counter() - t0
        npz_rate = result["samples_per_second"]

        decode = None
        if not args.no_png:
            folder = FolderImages(tmp / "png", "bench", args.workers)
            t0 = time.perf_counter()
            for _ in folder.batches(batch_size, workers=args.workers):
                pass
            decode = n / (time.perf_counter() - t0)

        m = args.pr_images
        feats = rng.normal(size=(2 * m, 2048)).astype(np.float32)
        t0 = time.perf_counter()
        precision_recall(feats[:m], feats[m:], device=device)
        pr_seconds = time.perf_counter() - t0

    # P/R costs ~ (ref^2 + samples^2 + 2 ref samples) distance rows of 2048; ADM: 50k samples, 10k reference.
    pr_units = lambda a, b: a * a + b * b + 2 * a * b  # noqa: E731
    pr_50k = pr_seconds * pr_units(50_000, 10_000) / pr_units(m, m)
    per_image = 1.0 / npz_rate
    fixed = npz_total - n * per_image
    gpu_50k = 50_000 * flops_per_image / (H100_FP32_SUSTAINED_TFLOPS * 1e12)
    figures = {
        "extractors": per_extractor,
        "device": str(device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "images_measured": n, "resolution": args.resolution, "batch_size": batch_size,
        "gflops_per_image": flops_per_image / 1e9,
        "bare_forward_images_per_s": bare,
        "pipeline_npz_images_per_s": npz_rate,
        "pipeline_npz_seconds_total": npz_total,
        "png_decode_images_per_s": decode,
        "fid_math_seconds (2 distances)": fid_math,
        f"precision_recall_seconds ({m}x{m})": pr_seconds,
        "extrapolated": n < 5000,
        "seconds_for_5000_images": 5000 * per_image + max(fixed, 0.0),
        "seconds_for_50000_images_features": 50_000 * per_image,
        "seconds_for_50k_vs_10k_precision_recall": pr_50k,
        "gpu_assumed_fp32_tflops": H100_FP32_SUSTAINED_TFLOPS,
        "gpu_seconds_for_50000_images_forward (estimate)": gpu_50k,
        "png_decode_seconds_for_50000_images (this CPU)": 50_000 / decode if decode else None,
    }
    figures["extractors"] = {"inception": {"gflops_per_image": flops_per_image / 1e9, "bare_images_per_s": bare,
                                           "pipeline_images_per_s": npz_rate, "ratio": npz_rate / bare,
                                           "images": n, "seconds_for_50000_images": 50_000 / npz_rate},
                             **per_extractor}
    for key, value in figures.items():
        if key == "extractors":
            continue
        print(f"{key:>48}: {value:,.3f}" if isinstance(value, float) else f"{key:>48}: {value}")
    print(f"\n{'extractor':>18} {'GFLOP/img':>10} {'bare img/s':>11} {'fid img/s':>10} {'ratio':>6} {'50k s':>8}")
    for name, row in figures["extractors"].items():
        print(f"{name:>18} {row['gflops_per_image']:>10.2f} {row['bare_images_per_s']:>11.2f} "
              f"{row['pipeline_images_per_s']:>10.2f} {row['ratio']:>6.2f} {row['seconds_for_50000_images']:>8.1f}")
    print(f"\nA GPU needs ~{flops_per_image / 1e9:.1f} GFLOP per image: 50,000 images = "
          f"{50_000 * flops_per_image / 1e15:.2f} PFLOP, about {gpu_50k:.0f}s at {H100_FP32_SUSTAINED_TFLOPS:.0f} "
          f"TFLOP/s float32; from a PNG folder the decoding workers set the pace "
          f"({'not measured' if decode is None else f'{decode:.0f} img/s'} with {args.workers} workers here), "
          f"from an .npz the memory-mapped read does not.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


def time_teacher(name: str, pixels: np.ndarray, tmp: Path, device: torch.device, args) -> dict:
    """A teacher extractor (random weights): bare global_features vs `evaluate()` on the same images."""
    extractor = open_extractor(name, device=device, random_weights=True)
    n = min(args.teacher_images, len(pixels))
    batch_size = args.batch_size or (250 if device.type == "cuda" else 16)
    np.savez(tmp / f"samples-{name}.npz", arr_0=pixels[:n])
    batches = [torch.from_numpy(pixels[s : s + batch_size]).permute(0, 3, 1, 2).contiguous()
               for s in range(0, n, batch_size)]
    with FlopCounterMode(display=False) as counter:
        extractor(batches[0][:1])
    flops = counter.get_total_flops()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    extractor(batches[0][:2])  # warm-up
    sync()
    t0 = time.perf_counter()
    bare_batches = batches[: max(1, 1024 // batch_size)]  # model time is steady: 1,024 images suffice
    for batch in bare_batches:  # uint8 in memory -> features: the resize to 224 px belongs to the extractor
        extractor(batch)
    sync()
    bare = sum(len(b) for b in bare_batches) / (time.perf_counter() - t0)

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(max(2 * extractor.dim, 256), extractor.dim))
    stats = ReferenceStats(Gaussian(ref.mean(0), np.cov(ref, rowvar=False), len(ref)), None,
                           ref[:1000].astype(np.float32), {})
    meta = {"extractor": name, "weights_sha256": extractor.sha256, "producer": "benchmark"}
    save_stats(tmp / f"ref-{name}.npz", stats, meta)
    result = evaluate(FidOptions(samples=tmp / f"samples-{name}.npz", ref=tmp / f"ref-{name}.npz", extractor=name,
                                 batch_size=batch_size, device=str(device), json_out=tmp / f"out-{name}.json",
                                 quiet=True, cache=False, random_weights=True), extractor=extractor)
    rate = result["samples_per_second"]
    print(f"{name}: {flops / 1e9:.2f} GFLOP/image, bare {bare:.2f} img/s, fid pipeline {rate:.2f} img/s "
          f"(ratio {rate / bare:.2f}, {n} images)", file=sys.stderr)
    return {"gflops_per_image": flops / 1e9, "bare_images_per_s": bare, "pipeline_images_per_s": rate,
            "ratio": rate / bare, "images": n, "achieved_gflops_per_s": bare * flops / 1e9,
            "seconds_for_50000_images": 50_000 / rate}


if __name__ == "__main__":
    sys.exit(main())
