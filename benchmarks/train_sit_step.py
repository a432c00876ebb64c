"""SiT training step throughput: the whole `train-sit` step against the bare model, against REPA-E's
step, and the data pipeline's rate next to what the step consumes.

    python benchmarks/train_sit_step.py [--model SiT-S/1] [--latent 32x16x16] [--batch 8]
                                        [--repae PATH/TO/YOUR/REPA-E/CHECKOUT] [--device cuda]

Builds the model with random weights and times, on the same batch:
  * whole: what `train-sit` does per optimizer step on the device: posterior sample and
    normalisation, flow path draw, label drop, forward with the REPA projector, velocity MSE +
    REPA loss in float32, backward, gradient clip, AdamW, EMA update;
  * bare: the model's forward + backward of a plain MSE + AdamW step, nothing else;
  * repa-e (with --repae): REPA-E's own SiT and step from a checkout of theirs
    (`models/sit.py`: forward with its BatchNorm normalisation, interpolant and losses; clip,
    AdamW, their EMA update) on the same configuration and batch. Their code is imported from
    the path given, never copied here.
  * data: `train-sit`'s data pipeline (SiTRows + DataLoader) on a synthetic latent cache and
    teacher-token cache of the same shapes, latents + tokens per second for 0, 1 and 2 workers.
FLOPs come from torch's FlopCounterMode on one whole step; utilisation = achieved FLOP/s over
the device's peak (--peak-tflops; defaults: 989 for an H100/H200 in bf16, or a CPU estimate
from cores x clock x 32 FP32 FLOPs/cycle for AVX2 with two FMA units).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sendvae_cli.flow.loss import velocity_mse
from sendvae_cli.generators.sit import build_sit
from sendvae_cli.train.ema import EMA
from sendvae_cli.train.sit_data import LatentNormalizer, micro_batch_generator
from sendvae_cli.train.sit_trainer import SiTObjective
from cpu_peak import cpu_peak_tflops


def timed_interleaved(fns: dict, repeats: int, sync) -> dict[str, dict[str, float]]:
    """Best wall and process-CPU seconds of each function, timed in turns (A B C A B C ...) so that
    load from other processes on a shared machine hits every variant alike."""
    for fn in fns.values():  # warm-up
        fn()
        sync()
    best = {name: {"wall_s": float("inf"), "cpu_s": float("inf")} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            best[name]["wall_s"] = min(best[name]["wall_s"], time.perf_counter() - w0)
            best[name]["cpu_s"] = min(best[name]["cpu_s"], time.process_time() - c0)
    return best


# --------------------------------------------------------------------------------------------
#                                   REPA-E's step
# --------------------------------------------------------------------------------------------


def repae_step_fn(repae: Path, args, channels: int, size: int, teacher_width: int, device, autocast, batch):
    """REPA-E's SiT and train_ldm_only step from the user's checkout at `repae`."""
    sys.path.insert(0, str(repae))
    try:
        from models.sit import SiT_models  # their code, from their checkout
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    # Their S sizes leave the final layer at the default width 768; give it the model's width.
    extra = {"decoder_hidden_size": 384} if args.model.startswith("SiT-S/") else {}
    model = SiT_models[args.model](input_size=size, in_channels=channels, num_classes=args.num_classes,
                                   class_dropout_prob=0.1, z_dims=[teacher_width], encoder_depth=args.encoder_depth,
                                   fused_attn=True, qk_norm=False, **extra).to(device)
    model.init_bn(latents_bias=torch.zeros(channels, device=device), latents_scale=torch.ones(channels, device=device))
    ema = EMA(model, 0.9999)  # their update_ema is the same lerp over parameters and float buffers
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
    mean, std, labels, tokens = batch
    loss_kwargs = dict(weighting="uniform", path_type="linear", prediction="v", align_only=False)
    steps_done = [0]

    def step():
        model.train()
        model.bn.eval()
        with torch.no_grad():
            x = mean.float() + std.float() * torch.randn_like(mean, dtype=torch.float32)
        with autocast():
            out = model(x=x, y=labels, zs=[tokens], loss_kwargs=loss_kwargs)
            loss = out["denoising_loss"].mean() + 0.5 * out["proj_loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, steps_done[0])
        steps_done[0] += 1

    return step, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
#                                    Data pipeline
# --------------------------------------------------------------------------------------------


def data_rate(shape, tokens_shape, rows: int, batch: int, workers_list, seconds: float) -> dict[str, float]:
    """latents (+ teacher tokens) per second through train-sit's loader, per worker count."""
    import h5py

    from sendvae_cli.caches.latents import write_latent_cache
    from sendvae_cli.train.sit_data import FeatureCache, SiTBatchSampler, SiTRows, keep_batch
    from sendvae_cli.caches.latent_dataset import LatentDataset

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        mean = rng.standard_normal((rows, *shape)).astype(np.float16)
        std = np.full((rows, *shape), 0.1, np.float16)
        latents = Path(tmp) / "latents.h5"
        write_latent_cache(latents, mean, std, np.arange(rows) % 10, mean_flip=mean[..., ::-1].copy(),
                           std_flip=std, attrs={"num_classes": 10})
        feats = Path(tmp) / "feats.h5"
        with h5py.File(feats, "w") as f:
            f.create_dataset("tokens", data=rng.standard_normal((rows, *tokens_shape)).astype(np.float16),
                             chunks=(1, *tokens_shape))
            f.attrs.update(complete=True, teacher="synthetic", teacher_width=tokens_shape[1],
                           token_grid=[int(tokens_shape[0] ** 0.5)] * 2)
        features = FeatureCache.open(feats, None, rows, None)
        for with_tokens in (False, True):
            dataset = SiTRows(LatentDataset(latents), features=features if with_tokens else None)
            for workers in workers_list:
                sampler = SiTBatchSampler(rows, batch, 1, 0, 1, seed=0, flip=not with_tokens)
                loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                                     collate_fn=keep_batch, persistent_workers=workers > 0,
                                                     prefetch_factor=4 if workers else None)
                it = iter(loader)
                for _ in range(3):
                    next(it)
                count, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    count += len(next(it)["mean"])
                rate = count / (time.perf_counter() - t0)
                out[f"{'latents+tokens' if with_tokens else 'latents'}_per_s_workers{workers}"] = rate
                del it, loader
    return out


# --------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="SiT-S/1")
    p.add_argument("--latent", default="32x16x16", help="C x H x W of the latents (paper: 32x16x16, f16d32 at 256 px)")
    p.add_argument("--teacher-width", type=int, default=768, help="teacher token width (DINOv2-B: 768)")
    p.add_argument("--encoder-depth", type=int, default=4)
    p.add_argument("--projector-width", type=int, default=None, help="REPA projector's hidden width (default: the model's 2048)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--repae", type=Path, default=None, help="a checkout of REPA-E (their models/sit.py is imported)")
    p.add_argument("--data-rows", type=int, default=2048)
    p.add_argument("--data-seconds", type=float, default=4.0)
    p.add_argument("--no-data", action="store_true", help="skip the data pipeline measurement")
    p.add_argument("--data-only", action="store_true", help="measure the data pipeline only")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    precision = "bf16" if bf16 else "fp32"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    channels, height, width = (int(v) for v in args.latent.split("x"))

    if args.data_only:
        tokens_n = height * width // int(args.model.rsplit("/", 1)[1]) ** 2
        result = {"device": f"cpu ({os.cpu_count()} cores)", "latent": [channels, height, width], "tokens": tokens_n,
                  "teacher_width": args.teacher_width, "batch": args.batch,
                  "data": data_rate((channels, height, width), (tokens_n, args.teacher_width), args.data_rows,
                                    args.batch, [0, 1, 2], args.data_seconds)}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return

    torch.manual_seed(0)
    model = build_sit(args.model, input_size=height, in_channels=channels, num_classes=args.num_classes,
                      projector_dims=[args.teacher_width], encoder_depth=args.encoder_depth,
                      **({"projector_width": args.projector_width} if args.projector_width else {})).to(device).train()
    tokens_n = (height // model.patch_size) * (width // model.patch_size)
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(args.batch, channels, height, width, generator=g).half().to(device)
    std = (torch.rand(args.batch, channels, height, width, generator=g) * 0.2).half().to(device)
    labels = torch.randint(0, args.num_classes, (args.batch,), generator=g).to(device)
    tokens = torch.randn(args.batch, tokens_n, args.teacher_width, generator=g).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # The whole train-sit step (sit_trainer.train_sit's inner loop, one micro-batch).
    normalizer = LatentNormalizer([0.0] * channels, [1.0] * channels).to(device)
    objective = SiTObjective(model, normalizer, 0.5, "uniform", args.num_classes, True)
    if args.compile:
        objective.model = torch.compile(model)
    ema = EMA(model, 0.9999)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
    counter = {"step": 0}

    def whole_step():
        generator = micro_batch_generator(0, counter["step"], 0, device)
        terms = objective(mean, std, labels, tokens, generator, precision)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, counter["step"])
        counter["step"] += 1

    # The bare model: forward + backward + AdamW on a fixed input.
    x_t = torch.randn(args.batch, channels, height, width, device=device)
    t = torch.rand(args.batch, device=device)
    target = torch.randn_like(x_t)
    bare_model = objective.model

    def bare_step():
        with autocast():
            v = bare_model(x_t, t, labels)
        velocity_mse(v, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as flops:
        whole_step()
    step_flops = flops.get_total_flops()
    variants = {"whole": whole_step, "bare": bare_step}
    repae_params = None
    if args.repae is not None:
        variants["repae"], repae_params = repae_step_fn(args.repae, args, channels, height, args.teacher_width,
                                                        device, autocast, (mean, std, labels, tokens))
    times = timed_interleaved(variants, args.repeats, sync)
    peak = args.peak_tflops or (989.0 if device.type == "cuda" and bf16 else (67.0 if device.type == "cuda" else cpu_peak_tflops()))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(), "precision": precision, "compile": args.compile,
        "model": args.model, "latent": [channels, height, width], "tokens": tokens_n,
        "teacher_width": args.teacher_width, "batch": args.batch, "repeats": args.repeats,
        "params": sum(p.numel() for p in model.parameters()),
        "step_tflop": step_flops / 1e12, "peak_tflops": peak,
    }
    for name, t in times.items():
        result[name] = dict(t, images_per_s=args.batch / t["wall_s"],
                            achieved_tflops=step_flops / t["wall_s"] / 1e12,
                            mfu=step_flops / t["wall_s"] / 1e12 / peak)
    # How much of the bare model's speed the whole step keeps (1.0 = no overhead at all).
    result["whole_vs_bare"] = {k: times["bare"][k] / times["whole"][k] for k in ("wall_s", "cpu_s")}
    if repae_params is not None:
        result["repae"]["params"] = repae_params
        result["whole_vs_repae"] = {k: times["repae"][k] / times["whole"][k] for k in ("wall_s", "cpu_s")}
    if not args.no_data:
        workers = [0, 1, 2]
        result["data"] = data_rate((channels, height, width), (tokens_n, args.teacher_width), args.data_rows,
                                   args.batch, workers, args.data_seconds)
        result["data"]["step_consumes_per_s"] = args.batch / times["whole"]["wall_s"]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
