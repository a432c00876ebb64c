"""Send-VAE train-step throughput and where the time goes.

    python benchmarks/train_vae_step.py [--vae f16d32] [--teacher dinov2-b] [--resolution 256] [--batch 4]
    python benchmarks/train_vae_step.py --vae tiny-f4d4 --teacher tv-mobilenet-v2 --resolution 64 --batch 16 \
        --mapper-width 256 --mapper-hidden 512 --no-lpips --no-gan --precision bf16

Builds the real architectures with random weights (VAE config, DINOv2-B teacher, mapper,
VGG16 LPIPS, PatchGAN discriminator), then times:
  * the whole optimizer step as `train-vae` runs it (forward, losses, backward, AdamW, the
    discriminator step), and
  * each component alone, forward + backward where it trains: VAE, teacher (forward only),
    mapper, LPIPS, discriminator.
FLOPs of one whole step come from torch's FlopCounterMode; achieved FLOP/s over the device's
peak gives the utilisation (pass --peak-tflops; defaults: 989 for an H100 in bf16, or a CPU
estimate from cores x clock x 32 FP32 FLOPs/cycle for AVX2 with two FMA units). On CUDA the
whole step's peak memory is reported too; --no-parts times the whole step only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.flop_counter import FlopCounterMode

from sendvae_cli.registry import get_registry
from sendvae_cli.vae.autoencoder import AutoencoderKL
from sendvae_cli.vae.discriminator import NLayerDiscriminator
from sendvae_cli.vae.losses import VAELoss
from sendvae_cli.vae.lpips import LPIPS
from sendvae_cli.vae.mapper import Mapper, alignment_loss
from cpu_peak import cpu_peak_tflops


def vae_config_name(name: str) -> str:
    """A config of the table (tiny-f4d4) or the name of a from-scratch VAE base (tiny-f4)."""
    from sendvae_cli.vae.autoencoder import VAE_CONFIGS

    if name in VAE_CONFIGS:
        return name
    try:
        spec = get_registry().vae_base(name)
    except Exception:  # noqa: BLE001 - the registry's one-line message is the error below
        spec = None
    config = (spec.options or {}).get("config") if spec is not None else None
    if config not in VAE_CONFIGS:
        raise SystemExit(f"error: --vae {name}: expected a config ({', '.join(VAE_CONFIGS)}) "
                         f"or a from-scratch VAE base (sendvae plugins)")
    return config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", default="f16d32")
    p.add_argument("--teacher", default="dinov2-b")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--memory-format", default="auto", choices=["auto", "contiguous", "channels_last"],
                   help="auto: channels_last on CPU, as train-vae runs")
    p.add_argument("--mapper-width", type=int, default=None)
    p.add_argument("--mapper-hidden", type=int, default=2048)
    p.add_argument("--no-lpips", action="store_true", help="the main job's setting (LPIPS weight 0)")
    p.add_argument("--no-gan", action="store_true", help="the tiny preset's setting (GAN weight 0: no discriminator step)")
    p.add_argument("--no-parts", action="store_true", help="time the whole step only, not each component")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: CUDA is not available on this machine")
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    torch.manual_seed(0)
    vae = AutoencoderKL(vae_config_name(args.vae)).to(device).train()
    teacher = get_registry().teacher(args.teacher).build(random_weights=True).to(device)
    grid = teacher.token_grid(args.resolution)
    patch = args.resolution // vae.downsample // grid[0]
    mapper = Mapper(vae.latent_channels, teacher.width, patch_size=patch, width=args.mapper_width,
                    projector_dim=args.mapper_hidden).to(device)
    lpips = None if args.no_lpips else LPIPS(random_weights=True).to(device)
    disc = NLayerDiscriminator().to(device)
    loss_fn = VAELoss(lpips, disc, lpips_weight=0.0 if lpips is None else 1.0, gan_weight=0.0 if args.no_gan else 0.1)
    params = list(vae.parameters()) + list(mapper.parameters())
    opt = torch.optim.AdamW(params, lr=3e-4)
    dopt = torch.optim.AdamW(disc.parameters(), lr=1e-4)
    x = torch.rand(args.batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    channels_last = args.memory_format == "channels_last" or (args.memory_format == "auto" and device.type == "cpu")
    if channels_last:
        vae.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        fn()  # warm-up
        sync()
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def full_step():
        target = teacher(x)
        with autocast():
            posterior = vae.encode(x)
            z = posterior.sample()
            recon = vae.decode(z)
            predicted = mapper(z)
        terms = loss_fn.generator_loss(x, recon, posterior, step=1)
        (terms["loss"] + alignment_loss(predicted, target)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if args.no_gan:
            return
        loss_fn.discriminator_loss(x, recon, step=1)["loss"].backward()
        dopt.step()
        dopt.zero_grad(set_to_none=True)

    def vae_part():
        with autocast():
            posterior = vae.encode(x)
            recon = vae.decode(posterior.sample())
        (recon.float().abs().mean() + posterior.kl().mean() * 1e-6).backward()
        vae.zero_grad(set_to_none=True)

    with torch.no_grad():
        z_fixed = vae.encode(x).sample()

    def mapper_part():
        with autocast():
            out = mapper(z_fixed)
        alignment_loss(out, torch.randn_like(out, dtype=torch.float32)).backward()
        mapper.zero_grad(set_to_none=True)

    def teacher_part():
        teacher(x)

    recon_leaf = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)

    def lpips_part():
        if lpips is not None:
            r = recon_leaf.clone().requires_grad_(True)
            lpips(x, r).mean().backward()

    def disc_part():
        if args.no_gan:
            return
        r = recon_leaf.clone().requires_grad_(True)
        (-disc(r).mean()).backward()  # the generator-side hinge term
        loss_fn.discriminator_loss(x, r, step=1)["loss"].backward()
        disc.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        full_step()
    step_flops = counter.get_total_flops()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = timed(full_step)
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    parts = {} if args.no_parts else {
        name: timed(fn) for name, fn in (("vae", vae_part), ("teacher", teacher_part), ("mapper", mapper_part),
                                         ("lpips", lpips_part), ("discriminator", disc_part))}
    peak = args.peak_tflops or (989.0 if device.type == "cuda" and bf16 else (67.0 if device.type == "cuda" else cpu_peak_tflops()))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16" if bf16 else "fp32", "channels_last": channels_last, "vae": args.vae, "teacher": args.teacher,
        "resolution": args.resolution, "batch": args.batch, "step_s": step_s,
        "images_per_s": args.batch / step_s, "step_tflop": step_flops / 1e12,
        "achieved_tflops": step_flops / step_s / 1e12, "peak_tflops": peak,
        "utilisation": step_flops / step_s / 1e12 / peak, "peak_memory_gib": peak_memory,
        "parts_s": parts, "parts_share_of_step": {k: v / step_s for k, v in parts.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
