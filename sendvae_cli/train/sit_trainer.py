"""`sendvae train-sit`: a SiT flow-matching transformer, with REPA, on a latent cache.

One optimizer step (global batch G, kept on any number of processes by accumulation):
    for each micro-batch:
        z   = (mean + std * eps - mu) / sigma              posterior sample, normalised, on the device
        t, noise ~ the flow path; x_t = (1 - t) z + t noise; target v = noise - z
        v, h = SiT(x_t, t, y with 10% of labels dropped to the null class)
        L = |v - target|^2 + proj_weight * (-cos(h, teacher tokens))        (flow/loss.py)
    clip the gradient norm, AdamW step, EMA update.

Everything random in a micro-batch (eps, t, noise, label drop) comes from one generator seeded by
(seed, step, global micro-batch index) (`sit_data.micro_batch_generator`), the flip view from the
row's stream position, and the checkpoint holds the weights, EMA, optimizer and step: a killed run
rerun with the same command ends bit-identical to an uninterrupted one (on CPU), and N processes
draw exactly what one process accumulating N micro-batches draws.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sendvae_cli import __version__, distributed
from sendvae_cli.errors import UserError
from sendvae_cli.progress import info, progress_bar, warn
from sendvae_cli.train.checkpoint import Checkpoints, unwrap
from sendvae_cli.train.ema import EMA
from sendvae_cli.train.metrics import MetricsLog
from sendvae_cli.train.run_config import prepare_run_dir

# --------------------------------------------------------------------------------------------
#                                        Presets
# --------------------------------------------------------------------------------------------

COMMON = {
    "seed": 0, "lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0, "grad_clip": 1.0,
    "cfg_prob": 0.1, "time_schedule": "uniform", "proj_weight": 0.5, "precision": "auto", "keep_checkpoints": 2,
    "flip": "auto", "num_classes": None, "latent_stats": None, "preview_count": 16, "preview_steps": 50,
    "preview_cfg": 1.0, "steps": None, "epochs": None, "attention": "auto", "compile": False, "qk_norm": False,
    "encoder_depth": None, "projector_width": None,
}
PRESETS: dict[str, dict[str, Any]] = {
    # The published recipe (REPA / REPA-E train_ldm_only, and the paper's SiT-XL/1 runs): REPA on
    # DINOv2-B at block 8, global batch 256, 400k steps (80 epochs of ImageNet), EMA 0.9999.
    "paper": dict(COMMON, model="SiT-XL/1", teacher="dinov2-b", batch_size=256, micro_batch=64, steps=400_000,
                  ema=0.9999, log_every=100, checkpoint_every=10_000, sample_every=10_000),
    # CPU minutes: a 2-block SiT on a small cache; the EMA is short enough to follow a few thousand steps.
    "tiny": dict(COMMON, model="SiT-tiny/1", teacher="dinov2-s", batch_size=32, micro_batch=32, steps=300,
                 ema=0.999, projector_width=256, log_every=10, checkpoint_every=100, sample_every=100,
                 preview_steps=25),
}
# Options that may differ between a run and its resume without changing its result.
RUN_ONLY = ("workers", "quiet", "device", "log_every", "checkpoint_every", "sample_every", "keep_checkpoints",
            "steps", "epochs", "total_steps", "preset", "accumulation", "world_size", "producer", "compile",
            "attention", "attention_backend", "vae", "images", "teacher_features", "latents", "preview_steps",
            "preview_cfg", "preview_count")


class TrainingDiverged(UserError):
    """A loss became NaN or infinite: stop, keep the last good checkpoint."""


# --------------------------------------------------------------------------------------------
#                                        Set-up
# --------------------------------------------------------------------------------------------


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def total_steps(cfg: dict[str, Any], num_rows: int) -> int:
    if cfg.get("steps"):
        return int(cfg["steps"])
    if cfg.get("epochs"):
        return max(1, math.ceil(cfg["epochs"] * num_rows / cfg["batch_size"]))
    raise UserError("give --steps or --epochs")


def build_model(cfg: dict[str, Any], registry, data, teacher_width: int | None) -> nn.Module:
    """The SiT named by --model for this cache's latents, seeded, with one projector when REPA is on."""
    spec = registry.generator(cfg["model"])
    channels, size, _ = data.latent_shape
    overrides: dict[str, Any] = {"input_size": size, "in_channels": channels, "num_classes": data.num_classes,
                                 "class_dropout": cfg["cfg_prob"], "qk_norm": cfg["qk_norm"],
                                 "projector_dims": [teacher_width] if teacher_width else []}
    for key in ("encoder_depth", "projector_width"):
        if cfg.get(key):
            overrides[key] = cfg[key]
    torch.manual_seed(cfg["seed"])
    try:
        model = spec.build(**overrides)
    except (ValueError, TypeError) as error:
        raise UserError(f"--model {cfg['model']}: {error}") from None
    if not hasattr(model, "forward_with_projections") and teacher_width:
        raise UserError(f"--model {cfg['model']}: has no REPA projector (forward_with_projections); "
                        f"train it with --proj-weight 0")
    return model


class TeacherTargets:
    """REPA's target tokens for a micro-batch: read from the batch (feature cache) or computed by
    the teacher on the batch's images (already flipped for flipped latents)."""

    def __init__(self, cfg, registry, data, device):
        self.device = device
        self.teacher = None
        if data.features is not None:
            self.name, self.width, self.grid = data.features.teacher, data.features.width, data.features.grid
            return
        spec = registry.teacher(cfg["teacher"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            teacher = spec.build(weights=cfg.get("teacher_weights"), random_weights=cfg["random_weights"])
        self.teacher = teacher.to(device).freeze()
        resolution = int(data.attrs["resolution"])
        self.name, self.width, self.grid = spec.name, teacher.width, tuple(teacher.token_grid(resolution))

    def __call__(self, batch) -> torch.Tensor:
        if self.teacher is None:
            return batch["tokens"].to(self.device, non_blocking=True).float()
        from sendvae_cli.data.source import to_model_range

        images = to_model_range(batch["images"].to(self.device, non_blocking=True))
        with autocast_for(self.device, "auto"):
            return self.teacher(images).float()


def open_run_vae(cfg: dict[str, Any], data, registry, show: bool):
    """The VAE that decodes previews: --vae when given (refused unless it wrote the cache), else the
    one the cache records. None (previews off, with a warning) when the recorded one cannot be opened."""
    from sendvae_cli.weights import weights_sha256
    from sendvae_cli.vae.open import open_vae

    attrs = data.attrs
    recorded = attrs.get("vae_weights_sha256")
    if cfg.get("vae"):
        loaded = open_vae(cfg["vae"], registry, weights=cfg.get("vae_weights"))
        digest = weights_sha256(loaded.model)
        if recorded and digest != recorded:
            raise UserError(f"--vae {cfg['vae']}: LATENTS {cfg['latents']} was written by another VAE ({attrs.get('vae')!r}, "
                            f"weights sha256 {recorded[:12]}…, this one {digest[:12]}…); pass the VAE that wrote it, "
                            f"or cache again with `sendvae cache-latents`")
        return loaded, cfg["vae"]
    ref, weights = attrs.get("vae"), str(attrs.get("vae_weights") or "")
    if not ref:
        if show:
            warn("the latent cache records no VAE: sample grids stay off (give --vae to decode them)")
        return None, None
    try:
        if weights.startswith("random(seed="):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(weights[len("random(seed="):-1]))
                loaded = open_vae(ref, registry, random_weights=True)
        else:
            loaded = open_vae(ref, registry)
    except UserError as error:
        if show:
            warn(f"cannot open the cache's VAE {ref!r} ({error}); sample grids stay off (give --vae)")
        return None, None
    if recorded and weights_sha256(loaded.model) != recorded:
        if show:
            warn(f"the VAE at {ref!r} is no longer the one that wrote the cache; sample grids stay off (give --vae)")
        return None, None
    return loaded, ref


# --------------------------------------------------------------------------------------------
#                                     The SiT step
# --------------------------------------------------------------------------------------------


class SiTObjective(nn.Module):
    """Model + data preparation + loss for one micro-batch, so DDP wraps one module."""

    def __init__(self, model: nn.Module, normalizer: nn.Module, proj_weight: float, time_schedule: str,
                 num_classes: int, conditional: bool):
        super().__init__()
        self.model = model
        self.normalizer = normalizer
        self.proj_weight = proj_weight
        self.time_schedule = time_schedule
        self.num_classes = num_classes
        self.conditional = conditional

    def forward(self, mean, std, labels, tokens, generator, precision: str):
        from sendvae_cli.flow.interpolant import sample_path
        from sendvae_cli.flow.loss import flow_loss

        model = self.model
        with torch.no_grad():
            z = self.normalizer(mean, std, generator)
            path = sample_path(z, schedule=self.time_schedule, generator=generator)
            y = labels if self.conditional else torch.full_like(labels, self.num_classes)
            drop = unwrap_compiled(model).label_drop_mask(len(y), generator=generator, device=y.device) \
                if self.conditional else None
        with autocast_for(z.device, precision):
            if self.proj_weight:
                v, projected = model.forward_with_projections(path.x_t, path.t, y, drop_labels=drop)
            else:
                v, projected = model(path.x_t, path.t, y, drop_labels=drop), []
        return flow_loss(v, path.target, projected, [tokens] if self.proj_weight else [],
                         proj_weight=self.proj_weight)


def unwrap_compiled(module: nn.Module) -> nn.Module:
    return getattr(module, "_orig_mod", module)


# --------------------------------------------------------------------------------------------
#                                  Previews and export
# --------------------------------------------------------------------------------------------


class Preview:
    """A grid of EMA samples from fixed noise and labels, decoded by the run's VAE."""

    def __init__(self, cfg, data, vae, normalizer, device):
        count = cfg["preview_count"]
        g = torch.Generator().manual_seed(cfg["seed"] + 12_345)
        self.noise = torch.randn((count, *data.latent_shape), generator=g).to(device)
        if data.conditional:
            self.labels = (torch.arange(count) % data.num_classes).to(device)
        else:
            self.labels = torch.full((count,), data.num_classes, dtype=torch.long, device=device)
        self.vae, self.normalizer, self.cfg, self.data = vae, normalizer, cfg, data

    @torch.no_grad()
    def __call__(self, model: nn.Module, path: Path) -> None:
        from sendvae_cli.flow.samplers import ode_sample
        from sendvae_cli.train.preview import save_grid

        model = unwrap_compiled(unwrap(model))

        z = ode_sample(model, self.noise, self.labels, steps=self.cfg["preview_steps"],
                       cfg_scale=self.cfg["preview_cfg"], num_classes=self.data.num_classes).float()
        images = self.vae.decode(self.normalizer.denormalize(z))
        images = images.sample if hasattr(images, "sample") else images
        half = (len(images) + 1) // 2
        rows = [images[:half], images[half:]] if len(images) > 1 and len(images) % 2 == 0 else [images]
        save_grid(rows, path)


def write_export(folder: Path, model: nn.Module, cfg, data, vae_ref, step: int) -> None:
    from sendvae_cli.generators.export import save_generator_export

    vae_info = {
        "sha256": data.attrs.get("vae_weights_sha256"),
        "source": vae_ref or data.attrs.get("vae"),
        "weights": data.attrs.get("vae_weights"),
        "config": data.attrs.get("vae_config"),
        "resolution": data.attrs.get("resolution"),
        "downsample": data.attrs.get("downsample"),
    }
    save_generator_export(folder, unwrap_compiled(unwrap(model)), generator=cfg["model"],
                          latent_stats=(data.latent_mean.tolist(), data.latent_std.tolist()), vae=vae_info,
                          extra={"producer": f"sendvae {__version__} train-sit", "steps": step,
                                 "ema": cfg["ema"], "latents": cfg["latents"], "conditional": data.conditional,
                                 "proj_weight": cfg["proj_weight"], "teacher": cfg["teacher"] if cfg["proj_weight"] else None})


# --------------------------------------------------------------------------------------------
#                                      Training
# --------------------------------------------------------------------------------------------


def export_run(cfg: dict[str, Any], registry, out: Path) -> dict[str, Any]:
    """Write OUT/export from the run's latest checkpoint (the EMA weights), without training."""
    if not (Path(out) / "config.json").is_file():
        raise UserError(f"--export: {out} holds no train-sit run (no config.json)")
    return train_sit(cfg, registry, out, export_only=True)


def train_sit(cfg: dict[str, Any], registry, out: Path, export_only: bool = False) -> dict[str, Any]:
    from sendvae_cli.train.sit_data import (LatentNormalizer, SiTBatchSampler, keep_batch, micro_batch_generator,
                                            open_sit_data, token_grid_message)

    out = Path(out)
    dist = distributed.init(cfg["device"])
    show = dist.is_main and not cfg["quiet"]
    device = dist.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Batch geometry: keep the global batch, whatever the number of processes.
    per_step = cfg["micro_batch"] * dist.world
    if cfg["batch_size"] % per_step:
        raise UserError(f"--batch-size {cfg['batch_size']}: must be a multiple of --micro-batch {cfg['micro_batch']} "
                        f"x {dist.world} process(es)")
    accumulation = cfg["batch_size"] // per_step

    repa = cfg["proj_weight"] > 0
    data = open_sit_data(Path(cfg["latents"]), seed=cfg["seed"], flip=cfg["flip"], num_classes=cfg["num_classes"],
                         latent_stats=cfg.get("latent_stats"), images=cfg.get("images"),
                         features=cfg.get("teacher_features"), teacher=cfg["teacher"] if repa else None,
                         registry=registry, need_teacher=repa)
    old = _recorded_config(out)
    if old and old.get("vae_weights_sha256") not in (None, data.attrs.get("vae_weights_sha256")):
        raise UserError(f"LATENTS {cfg['latents']}: written by another VAE (weights sha256 "
                        f"{str(data.attrs.get('vae_weights_sha256'))[:12]}…) than the one run {out} started with "
                        f"({str(old['vae_weights_sha256'])[:12]}…); use that run's cache, or another --out")
    vae, vae_ref = open_run_vae(cfg, data, registry, show)
    targets = TeacherTargets(cfg, registry, data, device) if repa else None

    steps = total_steps(cfg, len(data.latents))
    cfg = dict(cfg, total_steps=steps, accumulation=accumulation, world_size=dist.world,
               producer=f"sendvae {__version__}", teacher=targets.name if targets else None,
               **data.describe())
    model = build_model(cfg, registry, data, targets.width if targets else None)
    if targets is not None:
        patch = int(getattr(model, "patch_size", 1))
        sit_grid = (data.latent_shape[1] // patch, data.latent_shape[2] // patch)
        if tuple(targets.grid) != sit_grid:
            source = f"--teacher-features {cfg['teacher_features']}" if data.features else f"--teacher {targets.name}"
            raise UserError(token_grid_message(data.latent_shape[1:], patch, targets.grid, cfg["model"], source))
    if hasattr(model, "set_attention"):
        model.set_attention(cfg["attention"])
    from sendvae_cli.generators.attention import resolve_backend

    cfg["attention_backend"] = resolve_backend(cfg["attention"], device)
    cfg["arch"] = dict(getattr(model, "arch", {}))
    ignore = RUN_ONLY
    resumed = prepare_run_dir(out, cfg, ignore=ignore, is_main=True) if dist.is_main else False
    dist.barrier()
    if not dist.is_main:
        prepare_run_dir(out, cfg, ignore=ignore, is_main=False)

    model = model.to(device).train()
    ema = EMA(model, cfg["ema"])
    normalizer = LatentNormalizer(data.latent_mean, data.latent_std).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                                  weight_decay=cfg["weight_decay"])
    modules = {"model": model, "ema": ema.shadow}
    checkpoints = Checkpoints(out / "checkpoints", keep=cfg["keep_checkpoints"])
    step = 0
    latest = checkpoints.latest()
    if latest is not None:
        state = checkpoints.load(latest, modules)
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        info(f"resuming {out} from {latest.name}", show)
    elif resumed:
        info(f"{out} has no checkpoint yet: starting from step 0", show)

    export_dir = out / "export"
    if export_only:
        if latest is None:
            raise UserError(f"--export: {out} has no checkpoint yet")
        if dist.is_main:
            write_export(export_dir, ema.shadow, cfg, data, vae_ref, step)
        info(f"exported the EMA model of step {step} to {export_dir}", show)
        return {"out": str(out), "steps": step, "export": str(export_dir)}
    if step >= steps and (export_dir / "sit.json").exists():
        info(f"{out} is already complete ({step} steps, exported to {export_dir}); nothing to do", show)
        return {"out": str(out), "steps": step, "export": str(export_dir)}

    objective: nn.Module = SiTObjective(model, normalizer, cfg["proj_weight"], cfg["time_schedule"],
                                        data.num_classes, data.conditional)
    if cfg["compile"]:
        objective.model = torch.compile(model)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        objective = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                        broadcast_buffers=False)  # the only buffers are fixed statistics

    metrics = MetricsLog(out / "metrics.jsonl", resume_step=step, enabled=dist.is_main)
    preview = Preview(cfg, data, vae.model.to(device).eval(), normalizer, device) if (vae and dist.is_main) else None
    sampler = SiTBatchSampler(len(data.latents), cfg["micro_batch"], dist.world, dist.rank, accumulation,
                              seed=cfg["seed"], start_step=step, flip=data.flip)
    # The loader gets its own generator: creating its iterator must not draw from the global RNG.
    loader = torch.utils.data.DataLoader(data.dataset, batch_sampler=sampler, num_workers=cfg["workers"],
                                         collate_fn=keep_batch, pin_memory=device.type == "cuda",
                                         persistent_workers=cfg["workers"] > 0,
                                         prefetch_factor=4 if cfg["workers"] > 0 else None,
                                         generator=torch.Generator().manual_seed(cfg["seed"]))
    batches = iter(loader)

    def save(at_step: int) -> None:
        if dist.is_main:
            checkpoints.save(at_step, modules, {"optimizer": optimizer.state_dict()})
            write_export(export_dir, ema.shadow, cfg, data, vae_ref, at_step)
        dist.barrier()

    last_saved = step
    window: dict[str, float] = {}
    window_n, window_t0 = 0, time.perf_counter()
    with progress_bar("train-sit", total=steps, completed=step, unit="step", show=show) as bar:
        while step < steps:
            sums = {"loss": torch.zeros((), device=device), "velocity": torch.zeros((), device=device),
                    "repa": torch.zeros((), device=device)}
            for micro in range(accumulation):
                batch = next(batches)
                generator = micro_batch_generator(cfg["seed"], step, micro * dist.world + dist.rank, device)
                mean = batch["mean"].to(device, non_blocking=True)
                std = batch["std"].to(device, non_blocking=True)
                labels = batch["labels"].to(device, non_blocking=True)
                tokens = targets(batch) if targets is not None else None
                sync = nullcontext() if (micro == accumulation - 1 or dist.world == 1) else objective.no_sync()
                with sync:
                    terms = objective(mean, std, labels, tokens, generator, cfg["precision"])
                    (terms.total / accumulation).backward()
                sums["loss"] += terms.total.detach() / accumulation
                sums["velocity"] += terms.velocity.detach() / accumulation
                if terms.repa is not None:
                    sums["repa"] += terms.repa.detach() / accumulation

            # NaN guard: stop before the bad step touches the weights; the last checkpoint stays good.
            values = torch.stack(list(sums.values()))
            if dist.world > 1:
                torch.distributed.all_reduce(values)
                values /= dist.world
            values = values.tolist()
            row = dict(zip(sums, values))
            if not repa:
                row.pop("repa")
            if not all(math.isfinite(v) for v in values):
                bad = ", ".join(f"{k}={v:.4g}" for k, v in row.items())
                raise TrainingDiverged(f"loss is not finite at step {step} ({bad}); stopped. The last good checkpoint "
                                       f"is {checkpoints.latest() or 'none'}; lower --lr or check the data")
            if cfg["grad_clip"] > 0:
                row["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"]))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(model)
            step += 1
            bar.advance(1)

            for key, value in row.items():
                window[key] = window.get(key, 0.0) + value
            window_n += 1
            if step % cfg["log_every"] == 0 or step == steps:
                elapsed = time.perf_counter() - window_t0
                logged = {k: v / window_n for k, v in window.items()}
                logged["images_per_s"] = window_n * cfg["batch_size"] / max(elapsed, 1e-9)
                metrics.write(step, logged)
                bar.describe(f"train-sit loss {logged['loss']:.4f}"
                             + (f" repa {logged['repa']:.3f}" if "repa" in logged else ""))
                window, window_n, window_t0 = {}, 0, time.perf_counter()
            if preview is not None and (step % cfg["sample_every"] == 0 or step == steps):
                preview(ema.shadow, out / "samples" / f"step-{step:06d}.png")
            if step % cfg["checkpoint_every"] == 0 or step == steps:
                save(step)
                last_saved = step
    if last_saved != step:
        save(step)
    info(f"exported the EMA model to {export_dir}", show)
    return {"out": str(out), "steps": step, "export": str(export_dir)}


def _recorded_config(out: Path) -> dict[str, Any] | None:
    import json

    path = Path(out) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
