"""SiT training step throughput: the whole `train-sit` step against the bare model, against REPA-E's
step, and the data pipeline's rate next to what the step consumes.

    python benchmarks/train_sit_step.py [--model SiT-S/1] [--latent 32x16x16] [--batch 8]
                                        [--repae PATH/TO/YOUR/REPA-E/CHECKOUT] [--device cuda]
    python benchmarks/train_sit_step.py --device cuda --model SiT-XL/1 --batch 256 --fit-batch \
        --compare-attention --compile-variant --no-data          # the GPU acceptance run's figures

Builds the model with random weights and times, on the same batch:
  * whole: what `train-sit` does per optimizer step on the device: posterior sample and
    normalisation, flow path draw, label drop, forward with the REPA projector, velocity MSE +
    REPA loss in float32, backward, gradient clip, AdamW, EMA update;
  * bare: the same model and the same work a step cannot do without: forward with the REPA
    projector on a fixed noisy input, the same float32 velocity MSE + REPA loss, backward, AdamW.
    whole / bare is then what the step's preparation, clip and EMA cost, nothing else;
  * whole_sdpa (--compare-attention): the whole step with SDPA attention, where the model's own
    backend is xformers (CUDA with the `cuda` extra);
  * repa-e (with --repae): REPA-E's own SiT and step from a checkout of theirs
    (`models/sit.py`: forward with its BatchNorm normalisation, interpolant and losses; clip,
    AdamW, their EMA update) on the same configuration and batch. Their code is imported from
    the path given, never copied here.
  * whole_compiled (--compile-variant): the whole step through torch.compile as train-sit's
    --compile applies it, timed after the eager figures are written (a compiler crash or hang
    leaves them in --json), with the number of graphs dynamo captured;
  * data: `train-sit`'s data pipeline (SiTRows + DataLoader) on a synthetic latent cache and
    teacher-token cache of the same shapes, latents + tokens per second for 0, 1 and 2 workers.
FLOPs come from torch's FlopCounterMode on one whole step; utilisation = achieved FLOP/s over
the device's peak (--peak-tflops; defaults: 989 for an H100/H200 in bf16, or a CPU estimate
from cores x clock x 32 FP32 FLOPs/cycle for AVX2 with two FMA units). On CUDA each variant's
peak memory is reported, and --fit-batch lowers the batch from --batch until every variant's
step fits. --profile adds torch.profiler's split of the whole and REPA-E steps.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from sendvae_cli.flow.interpolant import sample_path
from sendvae_cli.flow.loss import flow_loss
from sendvae_cli.generators.attention import resolve_backend
from sendvae_cli.generators.sit import build_sit
from sendvae_cli.train.ema import EMA
from sendvae_cli.train.loop import clip_grad_norm
from sendvae_cli.train.optim import adamw
from sendvae_cli.train.sit_data import LatentNormalizer, micro_batch_generator
from sendvae_cli.train.sit_trainer import SiTObjective
from cpu_peak import cpu_name, cpu_peak_tflops

PROJ_WEIGHT = 0.5  # REPA's and REPA-E's --proj-coeff


def timed_interleaved(fns: dict, repeats: int, sync, device) -> dict[str, dict[str, float]]:
    """Best wall and process-CPU seconds of each function, timed in turns (A B C A B C ...) so that
    load from other processes on a shared machine hits every variant alike. On CUDA also each
    variant's peak memory (GiB allocated by torch during its step)."""
    cuda = device.type == "cuda"
    best = {name: {"wall_s": float("inf"), "cpu_s": float("inf")} for name in fns}
    for name, fn in fns.items():  # warm-up
        w0 = time.perf_counter()
        fn()
        sync()
        best[name]["warmup_s"] = time.perf_counter() - w0
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            best[name]["wall_s"] = min(best[name]["wall_s"], time.perf_counter() - w0)
            best[name]["cpu_s"] = min(best[name]["cpu_s"], time.process_time() - c0)
            if cuda:
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                best[name]["peak_memory_gib"] = max(best[name].get("peak_memory_gib", 0.0), peak)
    return best


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def batch_candidates(batch: int) -> list[int]:
    """--batch, then smaller: each power-of-two halving and the step three quarters of the way."""
    sizes = set()
    while batch >= 1:
        sizes.update({batch, batch * 3 // 4})
        batch //= 2
    return sorted((b for b in sizes if b >= 1), reverse=True)


class Batch:
    """The inputs every variant reads, at one batch size (rebuilt when --fit-batch lowers it)."""

    def __init__(self, batch: int, shape, num_classes: int, tokens_n: int, teacher_width: int, device):
        g = torch.Generator().manual_seed(0)
        self.size = batch
        # As train-sit reads them: float16 posterior mean and std from the latent cache.
        self.mean = torch.randn(batch, *shape, generator=g).half().to(device)
        self.std = (torch.rand(batch, *shape, generator=g) * 0.2).half().to(device)
        self.labels = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        self.tokens = torch.randn(batch, tokens_n, teacher_width, generator=g).to(device)
        # The bare step's fixed point on the flow path and its target.
        self.x_t = torch.randn(batch, *shape, generator=g).to(device)
        self.t = torch.rand(batch, generator=g).to(device)
        self.target = torch.randn(batch, *shape, generator=g).to(device)


# --------------------------------------------------------------------------------------------
#                                   REPA-E's step
# --------------------------------------------------------------------------------------------


def repae_step_fn(repae: Path, args, channels: int, size: int, teacher_width: int, device, autocast, inputs):
    """REPA-E's SiT and train_ldm_only step from the user's checkout at `repae`; `inputs()` is the
    current Batch."""
    sys.path.insert(0, str(repae))
    try:
        from models.sit import SiT_models  # their code, from their checkout
    finally:
        sys.path.pop(0)
    if args.model not in SiT_models:
        sys.exit(f"error: --repae: REPA-E has no {args.model}; theirs are {', '.join(SiT_models)}")
    torch.manual_seed(0)
    # Their S sizes leave the final layer at the default width 768; give it the model's width.
    extra = {"decoder_hidden_size": 384} if args.model.startswith("SiT-S/") else {}
    model = SiT_models[args.model](input_size=size, in_channels=channels, num_classes=args.num_classes,
                                   class_dropout_prob=0.1, z_dims=[teacher_width], encoder_depth=args.encoder_depth,
                                   fused_attn=True, qk_norm=False, **extra).to(device)
    model.init_bn(latents_bias=torch.zeros(channels, device=device), latents_scale=torch.ones(channels, device=device))
    ema = EMA(model, 0.9999)  # their update_ema is the same lerp over parameters and float buffers
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
    loss_kwargs = dict(weighting="uniform", path_type="linear", prediction="v", align_only=False)
    steps_done = [0]

    def step():
        b = inputs()
        model.train()
        model.bn.eval()
        with record_function("step/prepare"), torch.no_grad():
            x = b.mean.float() + b.std.float() * torch.randn_like(b.mean, dtype=torch.float32)
        with record_function("step/forward+loss"), autocast():
            out = model(x=x, y=b.labels, zs=[b.tokens], loss_kwargs=loss_kwargs)
            loss = out["denoising_loss"].mean() + PROJ_WEIGHT * out["proj_loss"].mean()
        with record_function("step/backward"):
            loss.backward()
        with record_function("step/clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function("step/adamw"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with record_function("step/ema"):
            ema.update(model, steps_done[0])
        steps_done[0] += 1

    def release():
        optimizer.zero_grad(set_to_none=True)

    return step, release, sum(p.numel() for p in model.parameters())


def profile_steps(fns: dict, top: int) -> dict[str, dict]:
    """torch.profiler over one call of each function: the step's sections (record_function) and its
    most expensive operators by self CPU time, printed, and returned in milliseconds."""
    out = {}
    for name, fn in fns.items():
        fn()  # warm-up outside the profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = prof.key_averages()
        sections = {e.key: e.cpu_time_total / 1e3 for e in events if e.key.startswith("step/")}
        ops = sorted((e for e in events if not e.key.startswith("step/")), key=lambda e: -e.self_cpu_time_total)
        out[name] = {"sections_ms": sections,
                     "top_ops_self_ms": {e.key: round(e.self_cpu_time_total / 1e3, 3) for e in ops[:top]},
                     "op_calls": sum(e.count for e in events if not e.key.startswith("step/"))}
        print(f"\n== {name}: sections (ms) ==", file=sys.stderr)
        for key, ms in sorted(sections.items()):
            print(f"{key:>28} {ms:10.1f}", file=sys.stderr)
        print(f"== {name}: top {top} operators by self CPU time (ms, calls) of {out[name]['op_calls']} calls ==",
              file=sys.stderr)
        for e in ops[:top]:
            print(f"{e.key:>40} {e.self_cpu_time_total / 1e3:10.2f} {e.count:6d}", file=sys.stderr)
    return out


def prep_parts_ms(objective, ema, model, optimizer, b: Batch, device, sync, repeats: int = 20) -> dict[str, float]:
    """The whole step's work that the bare step lacks, each part alone (median of `repeats`, ms)."""
    def median_ms(fn):
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return 1e3 * sorted(times)[len(times) // 2]

    g = micro_batch_generator(0, 0, 0, device)
    with torch.no_grad():
        z = objective.normalizer(b.mean, b.std, g)
    # Gradients to clip: one backward of the bare loss, kept for the clip timing.
    v, projected = model.forward_with_projections(b.x_t, b.t, b.labels)
    flow_loss(v, b.target, projected, [b.tokens], proj_weight=PROJ_WEIGHT).total.backward()
    with torch.no_grad():
        parts = {
            "generator": median_ms(lambda: micro_batch_generator(0, 1, 0, device)),
            "normalise": median_ms(lambda: objective.normalizer(b.mean, b.std, g)),
            "path": median_ms(lambda: sample_path(z, schedule=objective.time_schedule, generator=g)),
            "label_drop": median_ms(lambda: model.label_drop_mask(b.size, generator=g, device=b.labels.device)),
            "ema": median_ms(lambda: ema.update(model, 10**6)),
        }
    parts["clip"] = median_ms(lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    optimizer.zero_grad(set_to_none=True)
    return parts


# --------------------------------------------------------------------------------------------
#                                    Data pipeline
# --------------------------------------------------------------------------------------------


def data_rate(shape, tokens_shape, rows: int, batch: int, workers_list, seconds: float) -> dict[str, float]:
    """latents (+ teacher tokens) per second through train-sit's loader, per worker count."""
    import h5py

    from sendvae_cli.caches.latents import write_latent_cache
    from sendvae_cli.train.sit_data import TokenTargets, SiTBatchSampler, SiTRows, keep_batch
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
        features = TokenTargets.open(feats, None, rows, None)
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
    p.add_argument("--encoder-depth", type=int, default=None, help="block REPA aligns (default: the model's)")
    p.add_argument("--projector-width", type=int, default=None, help="REPA projector's hidden width (default: the model's 2048)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--fit-batch", action="store_true",
                   help="on CUDA, lower the batch from --batch until every variant's step fits in memory")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--attention", default="auto", choices=["auto", "xformers", "sdpa"])
    p.add_argument("--compare-attention", action="store_true",
                   help="also time the whole step with SDPA where the model's attention is xformers")
    p.add_argument("--compile", action="store_true", help="every variant through torch.compile")
    p.add_argument("--compile-variant", action="store_true",
                   help="after the eager figures, also time the whole step through torch.compile")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--repae", type=Path, default=None, help="a checkout of REPA-E (their models/sit.py is imported)")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler's split of the whole, bare and REPA-E steps, and the whole step's extra parts alone")
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument("--data-rows", type=int, default=2048)
    p.add_argument("--data-seconds", type=float, default=4.0)
    p.add_argument("--no-data", action="store_true", help="skip the data pipeline measurement")
    p.add_argument("--data-only", action="store_true", help="measure the data pipeline only")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: CUDA is not available on this machine")
    if args.repae is not None and not (args.repae / "models" / "sit.py").is_file():
        sys.exit(f"error: --repae {args.repae}: not a REPA-E checkout (no models/sit.py)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    precision = "bf16" if bf16 else "fp32"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    channels, height, width = (int(v) for v in args.latent.split("x"))

    def write(result):
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    if args.data_only:
        tokens_n = height * width // int(args.model.rsplit("/", 1)[1]) ** 2
        write({"device": f"cpu ({os.cpu_count()} cores): {cpu_name()}", "latent": [channels, height, width], "tokens": tokens_n,
               "teacher_width": args.teacher_width, "batch": args.batch,
               "data": data_rate((channels, height, width), (tokens_n, args.teacher_width), args.data_rows,
                                 args.batch, [0, 1, 2], args.data_seconds)})
        return

    torch.manual_seed(0)
    model = build_sit(args.model, input_size=height, in_channels=channels, num_classes=args.num_classes,
                      projector_dims=[args.teacher_width], attention=args.attention,
                      **({"encoder_depth": args.encoder_depth} if args.encoder_depth else {}),
                      **({"projector_width": args.projector_width} if args.projector_width else {})).to(device).train()
    args.encoder_depth = model.encoder_depth
    backend = resolve_backend(args.attention, device)
    tokens_n = (height // model.patch_size) * (width // model.patch_size)
    current: dict[str, Batch] = {}

    def inputs() -> Batch:
        return current["batch"]

    def use_batch(size: int) -> None:
        current.pop("batch", None)
        current["batch"] = Batch(size, (channels, height, width), args.num_classes, tokens_n, args.teacher_width,
                                 device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # The whole train-sit step: SiTTrainer.micro_step + optimizer_step and the loop's work around
    # them (the per-micro-batch seed, the loss values read back, the NaN guard, the EMA update).
    normalizer = LatentNormalizer([0.0] * channels, [1.0] * channels).to(device)
    objective = SiTObjective(model, normalizer, PROJ_WEIGHT, "uniform", 0.1, True)  # REPA's label drop
    if args.compile:
        objective.compile_model()
    ema = EMA(model, 0.9999)
    optimizer = adamw(model.parameters(), device, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
    counter = {"step": 0}

    def whole_step():
        b = inputs()
        with record_function("step/prepare"):
            generator = micro_batch_generator(0, counter["step"], 0, device)
        with record_function("step/forward+loss"):
            terms = objective(b.mean, b.std, b.labels, b.tokens, generator, precision)
        with record_function("step/backward"):
            terms.total.backward()
        with record_function("step/read-losses"):
            sums = {"loss": float(terms.total.detach()), "velocity": float(terms.velocity.detach()),
                    "repa": float(terms.repa.detach())}
            finite = torch.tensor([1.0 if all(math.isfinite(v) for v in sums.values()) else 0.0], device=device)
            finite.item()
        with record_function("step/clip"):
            float(clip_grad_norm(model.parameters(), 1.0))
        with record_function("step/adamw"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with record_function("step/ema"):
            ema.update(model, counter["step"])
        counter["step"] += 1

    # The bare step: the same model, projector and float32 losses, on a fixed point of the path.
    bare_model = objective.model

    def bare_step():
        b = inputs()
        with record_function("step/forward+loss"), autocast():
            v, projected = bare_model.forward_with_projections(b.x_t, b.t, b.labels)
        terms = flow_loss(v, b.target, projected, [b.tokens], proj_weight=PROJ_WEIGHT)
        with record_function("step/backward"):
            terms.total.backward()
        with record_function("step/adamw"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    variants = {"whole": whole_step, "bare": bare_step}
    skipped: dict[str, str] = {}
    if args.compare_attention:
        if backend == "xformers":
            def whole_sdpa_step():
                model.set_attention("sdpa")
                try:
                    whole_step()
                finally:
                    model.set_attention(args.attention)

            variants["whole_sdpa"] = whole_sdpa_step
        else:
            skipped["whole_sdpa"] = ("the model's attention is already SDPA" if device.type != "cuda"
                                     else "xformers is not installed (pip install -e '.[cuda]')")
    releases = [lambda: optimizer.zero_grad(set_to_none=True)]
    repae_params = None
    if args.repae is not None:
        variants["repae"], release, repae_params = repae_step_fn(args.repae, args, channels, height,
                                                                 args.teacher_width, device, autocast, inputs)
        releases.append(release)

    # The largest batch from --batch down at which every variant's step fits (CUDA only).
    tried = []
    for size in (batch_candidates(args.batch) if args.fit_batch and device.type == "cuda" else [args.batch]):
        tried.append(size)
        use_batch(size)
        if device.type != "cuda" or not args.fit_batch:
            break
        out_of_memory = False
        try:
            for fn in variants.values():
                fn()
            sync()
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            out_of_memory = True
        if not out_of_memory:
            break
        for release in releases:
            release()
        current.pop("batch", None)
        gc.collect()
        torch.cuda.empty_cache()
    else:
        sys.exit(f"error: no batch from {args.batch} down fits in the device's memory")
    batch = current["batch"].size

    # FLOPs with SDPA attention: torch counts its kernels, not xformers' (same arithmetic either way).
    model.set_attention("sdpa")
    with FlopCounterMode(display=False) as flops:
        whole_step()
    model.set_attention(args.attention)
    step_flops = flops.get_total_flops()
    times = timed_interleaved(variants, args.repeats, sync, device)
    peak = args.peak_tflops or (989.0 if device.type == "cuda" and bf16 else (67.0 if device.type == "cuda" else cpu_peak_tflops()))
    result = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({os.cpu_count()} cores): {cpu_name()}"),
        "torch_threads": torch.get_num_threads(), "precision": precision, "compile": args.compile,
        "attention": backend, "model": args.model, "latent": [channels, height, width], "tokens": tokens_n,
        "teacher_width": args.teacher_width, "encoder_depth": args.encoder_depth, "batch": batch,
        "batches_tried": tried, "repeats": args.repeats,
        "params": sum(p.numel() for p in model.parameters()),
        "step_tflop": step_flops / 1e12, "peak_tflops": peak, "skipped": skipped,
    }

    def figures(t: dict[str, float]) -> dict[str, float]:
        return dict(t, images_per_s=batch / t["wall_s"], achieved_tflops=step_flops / t["wall_s"] / 1e12,
                    mfu=step_flops / t["wall_s"] / 1e12 / peak)

    for name, t in times.items():
        result[name] = figures(t)
    # How much of the bare model's speed the whole step keeps (1.0 = no overhead at all).
    result["whole_vs_bare"] = {k: times["bare"][k] / times["whole"][k] for k in ("wall_s", "cpu_s")}
    if "whole_sdpa" in times:
        result["xformers_vs_sdpa"] = {k: times["whole_sdpa"][k] / times["whole"][k] for k in ("wall_s", "cpu_s")}
    if repae_params is not None:
        result["repae"]["params"] = repae_params
        result["whole_vs_repae"] = {k: times["repae"][k] / times["whole"][k] for k in ("wall_s", "cpu_s")}
    if args.profile:
        profiled = {k: v for k, v in variants.items() if k in ("whole", "bare", "repae")}
        result["profile"] = profile_steps(profiled, args.profile_top)
        result["whole_parts_ms"] = prep_parts_ms(objective, ema, model, optimizer, inputs(), device, sync)
    if not args.no_data:
        workers = [0, 1, 2]
        result["data"] = data_rate((channels, height, width), (tokens_n, args.teacher_width), args.data_rows,
                                   batch, workers, args.data_seconds)
        result["data"]["step_consumes_per_s"] = batch / times["whole"]["wall_s"]
    write(result)  # the eager figures stand even if the compiler fails below

    if args.compile_variant:
        from torch._dynamo.utils import counters

        # As train-sit's --compile does it (SiTTrainer.prepare). The graphs dynamo captured say
        # whether anything was compiled at all.
        objective.compile_model()
        compiled = timed_interleaved({"whole_compiled": whole_step}, args.repeats, sync, device)["whole_compiled"]
        graphs = int(counters["stats"]["unique_graphs"])
        result["whole_compiled"] = dict(figures(compiled), graphs=graphs)
        result["compiled_vs_eager"] = {k: times["whole"][k] / compiled[k] for k in ("wall_s", "cpu_s")}
        write(result)

if __name__ == "__main__":
    main()
