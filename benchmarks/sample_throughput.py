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
`--steps N` runs N steps of the same protocol instead of 250 and projects to 250: the model's
seconds grow with the steps (the guidance interval covers the same share of them), decoding and
writing do not. The GPU acceptance run (gpu_acceptance.py) samples one batch this way; with
`--device cpu --model SiT-tiny/1 --vae tiny-f16d8 --resolution 64` the same code runs at toy size.
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
from sendvae_cli.vae.formats import build_vae

RESULTS = Path(__file__).parent / "results"
PAPER_STEPS = 250  # the paper's SDE steps (Euler-Maruyama)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (DiT's init zeroes the output), so the maths is the real maths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.ndim >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.ndim < 2 else fan_in ** -0.5))
    return model


def run_ours(gen: SamplingModel, settings: SampleSettings, batch_size: int, compile: bool, device: str | None = None,
             full_steps: int | None = None) -> dict:
    dist = init(device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = sample_to_folder(gen, settings, Path(tmp) / "out", dist, batch_size=batch_size, compile=compile,
                                    show=False)
        seconds = time.perf_counter() - start
        run = manifest["runs"][-1]
        png_serial = png_encode_seconds(Path(tmp) / "out" / "samples.npz")
    result = {"images": settings.count, "steps": settings.steps, "seconds": round(seconds, 3),
              "images_per_s": round(settings.count / seconds, 2),
              "seconds_for_50k_at_this_rate": round(50_000 * seconds / settings.count, 1),
              "model_s": run["model_s"], "decode_s": run["decode_s"],
              "writing_s": round(run["write_wait_s"] + run["npz_s"], 3),
              "png_wait_s": run["write_wait_s"], "npz_s": run["npz_s"],
              "png_encode_serial_s": round(png_serial, 3), "device": run["device"], "batch_size": batch_size}
    if full_steps and full_steps != settings.steps:
        result.update(projected(settings.count, seconds, run["model_s"], settings.steps, full_steps))
    return result


def projected(images: int, seconds: float, model_s: float, steps: int, full_steps: int) -> dict:
    """The run's figures had it taken `full_steps` steps: the model's share scales with the steps."""
    full = seconds + model_s * (full_steps / steps - 1)
    return {"projected_steps": full_steps, "projected_seconds": round(full, 3),
            "projected_images_per_s": round(images / full, 3),
            "projected_hours_for_50k": round(50_000 * full / images / 3600, 2)}


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
    vae = build_vae(VAE_CONFIGS["tiny-f16d8"])
    gen = SamplingModel(model=model, num_classes=10, latent_shape=(8, 4, 4), latent_mean=torch.zeros(8),
                    latent_std=torch.ones(8), vae=vae, identity={"model_sha256": "random", "vae_sha256": "random"})
    settings = SampleSettings(count=args.images or 128, mode="ode", steps=20, cfg_scale=1.5, guidance_high=0.7)
    return {"mode": "cpu tiny SiT (depth 4, width 128) + tiny VAE, 64 px, ODE Euler 20 + CFG [0, 0.7]",
            "torch_threads": torch.get_num_threads(), **run_ours(gen, settings, args.batch_size or 32, False)}


def gpu_model(name: str = "SiT-XL/1", vae_name: str = "f16d32", resolution: int = 256,
              seed: int = 0) -> tuple[SiT, torch.nn.Module, tuple[int, int, int]]:
    torch.manual_seed(seed)
    vae = build_vae(VAE_CONFIGS[vae_name])
    shape = (vae.latent_channels, resolution // vae.downsample, resolution // vae.downsample)
    model = randomise(build_sit(name, input_size=shape[1], in_channels=shape[0], num_classes=1000))
    return model, vae, shape


def gpu_benchmark(args) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --gpu needs CUDA (or --device cpu for the same protocol at toy size)")
    model, vae, shape = gpu_model(args.model, args.vae, args.resolution)
    gen = SamplingModel(model=model, num_classes=1000, latent_shape=shape, latent_mean=torch.zeros(shape[0]),
                        latent_std=torch.ones(shape[0]), vae=vae,
                        identity={"model_sha256": "random", "vae_sha256": "random"})
    precision = "bf16" if args.device == "cuda" else "fp32"
    settings = SampleSettings(count=args.images or 50_000, mode="sde", steps=args.steps, cfg_scale=1.5,
                              guidance_low=0.0, guidance_high=0.75, precision=precision)
    result = {"mode": f"{args.model} + {args.vae} VAE, {args.resolution} px, SDE {args.steps} + CFG [0, 0.75], "
                      f"{precision}",
              "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
              **run_ours(gen, settings, args.batch_size or 256, args.compile, args.device, PAPER_STEPS)}
    if args.repae:
        if args.device != "cuda":
            sys.exit("error: --repae times their loop on CUDA only")
        theirs = repae_loop(Path(args.repae), args.repae_images, args.batch_size or 256, args.steps, args.model)
        result["repae"] = theirs
        rate = "projected_images_per_s" if "projected_images_per_s" in theirs else "images_per_s"
        result["ratio_vs_repae"] = round(result.get(rate, result["images_per_s"]) / theirs[rate], 3)
    return result


def repae_loop(checkout: Path, images: int, batch_size: int, steps: int = PAPER_STEPS, name: str = "SiT-XL/1") -> dict:
    """REPA-E generate.py's per-batch work on one GPU, from the user's checkout."""
    sys.path.insert(0, str(checkout))
    from models.autoencoder import vae_models  # noqa: E402  (their code, their checkout)
    from models.sit import SiT_models  # noqa: E402
    from samplers import euler_maruyama_sampler  # noqa: E402

    torch.backends.cuda.matmul.allow_tf32 = True  # their --tf32 default
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = SiT_models[name](input_size=16, in_channels=32, num_classes=1000, class_dropout_prob=0.1,
                             z_dims=[768], encoder_depth=8, bn_momentum=0.1, fused_attn=True,
                             qk_norm=False).to(device)
    randomise(model).eval()
    vae = vae_models["f16d32"]().to(device).eval()
    scale, bias = torch.ones(1, 32, 1, 1, device=device), torch.zeros(1, 32, 1, 1, device=device)
    sampler_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        torch.cuda.synchronize()
        start = time.perf_counter()
        done = 0
        while done < images:
            z = torch.randn(batch_size, 32, 16, 16, device=device)
            y = torch.randint(0, 1000, (batch_size,), device=device)
            with torch.no_grad():
                t0 = time.perf_counter()
                samples = euler_maruyama_sampler(model, z, y, num_steps=steps, cfg_scale=1.5, guidance_low=0.0,
                                                 guidance_high=0.75, path_type="linear").to(torch.float32)
                torch.cuda.synchronize()
                sampler_s += time.perf_counter() - t0
                samples = vae.decode(samples / scale + bias).sample
                samples = torch.clamp(255.0 * (samples + 1) / 2.0, 0, 255).permute(0, 2, 3, 1)
                samples = samples.to("cpu", dtype=torch.uint8).numpy()
            for i, sample in enumerate(samples):
                Image.fromarray(sample).save(f"{tmp}/{done + i:06d}.png")
            done += batch_size
        seconds = time.perf_counter() - start
    result = {"images": done, "steps": steps, "seconds": round(seconds, 3), "images_per_s": round(done / seconds, 2),
              "sampler_s": round(sampler_s, 3), "precision": "fp32 + TF32", "batch_size": batch_size}
    if steps != PAPER_STEPS:
        result.update(projected(done, seconds, sampler_s, steps, PAPER_STEPS))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="SiT-XL/1, SDE-250 + CFG interval on CUDA")
    parser.add_argument("--images", type=int, default=None, help="samples (CPU: 128, GPU: 50,000)")
    parser.add_argument("--batch-size", type=int, default=None, help="CPU: 32, GPU: 256")
    parser.add_argument("--steps", type=int, default=PAPER_STEPS,
                        help="--gpu: SDE steps run; other than 250, the figures are also projected to 250")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="--gpu: cpu runs the same protocol (fp32) at the size --model / --vae give")
    parser.add_argument("--model", default="SiT-XL/1", help="--gpu: the generator size")
    parser.add_argument("--vae", default="f16d32", help="--gpu: the VAE config that decodes")
    parser.add_argument("--resolution", type=int, default=256, help="--gpu: image size")
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
