"""`sendvae sample` throughput: images/s of the whole pipeline and where the time goes.

    python benchmarks/sample_throughput.py                     # CPU, tiny SiT + tiny VAE
    python benchmarks/sample_throughput.py --gpu [--images 50000] [--compile] [--repae PATH/TO/REPA-E]

CPU mode: a tiny SiT (depth 4, width 128, patch 1) on the tiny f16d8 VAE's 8 x 4 x 4 latents
(64 px images), ODE Euler 20 steps with CFG 1.5 on [0, 0.7], through `sample_to_folder` into a
temporary folder. Reports images/s and the split model / decode / writing (the PNG wait on the
critical path, plus the .npz assembly), and what encoding the PNGs would cost if it were serial.

GPU mode (needs CUDA; random weights are fine for speed): SiT-XL/1 on f16d32 latents (32 x 16 x 16,
256 px images), the paper's protocol: SDE Euler-Maruyama 250 steps, CFG on t in [0, 0.75], bf16
autocast, batch 256, `--images` samples (50,000 by default). With `--repae PATH` (a checkout of
End2End-Diffusion/REPA-E; nothing of it is in this repository) it also times their generate.py's
per-batch loop on the same model size and GPU (their SiT and VAE at random weights, their
euler_maruyama_sampler, fp32 with TF32 as their default, PNG saving) over `--repae-images`
images, and prints the ratio of images/s (goal >= 1.3).

SDE-250 with CFG on SiT-XL/1 costs hours for 50,000 images on one GPU; a few thousand images give the
rate, and the figures include the time 50,000 would take at that rate. Not run here (no GPU).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sendvae_cli.distributed import init
from sendvae_cli.generate.pipeline import SamplingModel, SampleSettings, sample_to_folder
from sendvae_cli.generators.sit import SiT, build_sit
from sendvae_cli.vae.autoencoder import VAE_CONFIGS
from sendvae_cli.vae.formats import build_model

RESULTS = Path(__file__).parent / "results"


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (DiT's init zeroes the output), so the maths is the real maths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.ndim >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.ndim < 2 else fan_in ** -0.5))
    return model


def run_ours(gen: SamplingModel, settings: SampleSettings, batch_size: int, compile: bool) -> dict:
    dist = init(None)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = sample_to_folder(gen, settings, Path(tmp) / "out", dist, batch_size=batch_size, compile=compile,
                                    show=False)
        seconds = time.perf_counter() - start
        run = manifest["runs"][-1]
        png_serial = png_encode_seconds(Path(tmp) / "out" / "samples.npz")
    return {"images": settings.count, "seconds": round(seconds, 3),
            "images_per_s": round(settings.count / seconds, 2),
            "seconds_for_50k_at_this_rate": round(50_000 * seconds / settings.count, 1),
            "model_s": run["model_s"], "decode_s": run["decode_s"],
            "writing_s": round(run["write_wait_s"] + run["npz_s"], 3),
            "png_wait_s": run["write_wait_s"], "npz_s": run["npz_s"],
            "png_encode_serial_s": round(png_serial, 3), "device": run["device"], "batch_size": batch_size}


def png_encode_seconds(npz: Path, limit: int = 256) -> float:
    """What encoding the PNGs costs on one thread (the pipeline overlaps it with sampling)."""
    with np.load(npz) as data:
        images = data["arr_0"][:limit]
        count = len(data["arr_0"])
    start = time.perf_counter()
    for image in images:
        Image.fromarray(image).save(io.BytesIO(), format="PNG")
    return (time.perf_counter() - start) * count / len(images)


def cpu_benchmark(args) -> dict:
    torch.manual_seed(0)
    model = randomise(SiT(input_size=4, in_channels=8, patch_size=1, depth=4, width=128, heads=4, num_classes=10))
    vae = build_model(VAE_CONFIGS["tiny-f16d8"])
    gen = SamplingModel(model=model, num_classes=10, latent_shape=(8, 4, 4), latent_mean=torch.zeros(8),
                    latent_std=torch.ones(8), vae=vae, identity={"model_sha256": "random", "vae_sha256": "random"})
    settings = SampleSettings(count=args.images or 128, mode="ode", steps=20, cfg_scale=1.5, guidance_high=0.7)
    return {"mode": "cpu tiny SiT (depth 4, width 128) + tiny VAE, 64 px, ODE Euler 20 + CFG [0, 0.7]",
            "torch_threads": torch.get_num_threads(), **run_ours(gen, settings, args.batch_size or 32, False)}


def gpu_model(seed: int = 0) -> tuple[SiT, torch.nn.Module]:
    torch.manual_seed(seed)
    model = randomise(build_sit("SiT-XL/1", input_size=16, in_channels=32, num_classes=1000))
    vae = build_model(VAE_CONFIGS["f16d32"])
    return model, vae


def gpu_benchmark(args) -> dict:
    if not torch.cuda.is_available():
        sys.exit("--gpu needs CUDA")
    model, vae = gpu_model()
    gen = SamplingModel(model=model, num_classes=1000, latent_shape=(32, 16, 16), latent_mean=torch.zeros(32),
                    latent_std=torch.ones(32), vae=vae, identity={"model_sha256": "random", "vae_sha256": "random"})
    settings = SampleSettings(count=args.images or 50_000, mode="sde", steps=250, cfg_scale=1.5,
                              guidance_low=0.0, guidance_high=0.75, precision="bf16")
    result = {"mode": "gpu SiT-XL/1 + f16d32 VAE, 256 px, SDE 250 + CFG [0, 0.75], bf16",
              "gpu": torch.cuda.get_device_name(), **run_ours(gen, settings, args.batch_size or 256, args.compile)}
    if args.repae:
        theirs = repae_loop(Path(args.repae), args.repae_images, args.batch_size or 256)
        result["repae"] = theirs
        result["ratio_vs_repae"] = round(result["images_per_s"] / theirs["images_per_s"], 3)
    return result


def repae_loop(checkout: Path, images: int, batch_size: int) -> dict:
    """REPA-E generate.py's per-batch work on one GPU, from the user's checkout."""
    sys.path.insert(0, str(checkout))
    from models.autoencoder import vae_models  # noqa: E402  (their code, their checkout)
    from models.sit import SiT_models  # noqa: E402
    from samplers import euler_maruyama_sampler  # noqa: E402

    torch.backends.cuda.matmul.allow_tf32 = True  # their --tf32 default
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = SiT_models["SiT-XL/1"](input_size=16, in_channels=32, num_classes=1000, class_dropout_prob=0.1,
                                   z_dims=[768], encoder_depth=8, bn_momentum=0.1, fused_attn=True,
                                   qk_norm=False).to(device)
    randomise(model).eval()
    vae = vae_models["f16d32"]().to(device).eval()
    scale, bias = torch.ones(1, 32, 1, 1, device=device), torch.zeros(1, 32, 1, 1, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        torch.cuda.synchronize()
        start = time.perf_counter()
        done = 0
        while done < images:
            z = torch.randn(batch_size, 32, 16, 16, device=device)
            y = torch.randint(0, 1000, (batch_size,), device=device)
            with torch.no_grad():
                samples = euler_maruyama_sampler(model, z, y, num_steps=250, cfg_scale=1.5, guidance_low=0.0,
                                                 guidance_high=0.75, path_type="linear").to(torch.float32)
                samples = vae.decode(samples / scale + bias).sample
                samples = torch.clamp(255.0 * (samples + 1) / 2.0, 0, 255).permute(0, 2, 3, 1)
                samples = samples.to("cpu", dtype=torch.uint8).numpy()
            for i, sample in enumerate(samples):
                Image.fromarray(sample).save(f"{tmp}/{done + i:06d}.png")
            done += batch_size
        seconds = time.perf_counter() - start
    return {"images": done, "seconds": round(seconds, 3), "images_per_s": round(done / seconds, 2),
            "precision": "fp32 + TF32", "batch_size": batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="SiT-XL/1, SDE-250 + CFG interval on CUDA")
    parser.add_argument("--images", type=int, default=None, help="samples (CPU: 128, GPU: 50,000)")
    parser.add_argument("--batch-size", type=int, default=None, help="CPU: 32, GPU: 256")
    parser.add_argument("--compile", action="store_true", help="torch.compile the SiT (GPU)")
    parser.add_argument("--repae", type=Path, help="a REPA-E checkout: also time their sampling loop (GPU)")
    parser.add_argument("--repae-images", type=int, default=2048, help="images for their loop")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="where to write the figures (default: benchmarks/results/)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = gpu_benchmark(args) if args.gpu else cpu_benchmark(args)
    print(json.dumps(result, indent=2))
    out = args.json or RESULTS / ("sample_throughput_gpu.json" if args.gpu else "sample_throughput_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
