"""`sendvae train-vae`: fine-tune a VAE so its latent aligns with a frozen teacher (Send-VAE).

One optimizer step:
    for each micro-batch (gradient accumulation keeps the global batch on fewer GPUs):
        posterior = VAE.encode(x); z = sample; x_hat = VAE.decode(z)
        L = L_VAE(x, x_hat, posterior) + align_weight * (1 - cos(mapper(z), teacher(x)))
    clip, AdamW step (VAE + mapper); then the discriminator's hinge step on the same batch.
Everything that decides the result (weights, both optimizers, EMA, data position) is in each
checkpoint, and the random numbers of a micro-batch (posterior sample, noise injection) come from
a seed derived from (seed, step, global micro-batch index). So rerunning the command after a
crash continues exactly where the last checkpoint left off (a killed and resumed run ends with
the same weights as an uninterrupted one), ranks never share noise, and DDP over N processes
draws the same numbers as gradient accumulation over N micro-batches in one process.
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
from sendvae_cli.data.open import open_images
from sendvae_cli.errors import UserError
from sendvae_cli.progress import info, progress_bar
from sendvae_cli.train.checkpoint import Checkpoints, unwrap
from sendvae_cli.train.ema import EMA
from sendvae_cli.train.metrics import MetricsLog
from sendvae_cli.train.preview import save_grid
from sendvae_cli.train.run_config import prepare_run_dir
from sendvae_cli.train.batches import StreamBatchSampler
from sendvae_cli.vae.mapper import Mapper, alignment_loss, describe_grid_mismatch, mapper_patch_size

# --------------------------------------------------------------------------------------------
#                                        Presets
# --------------------------------------------------------------------------------------------

COMMON = {
    "seed": 0, "num_images": None, "lr": 3e-4, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0,
    "grad_clip": 1.0, "align_weight": 1.0, "mapper_depth": 1, "mapper_patch": None, "noise": True,
    "recon": "l1", "recon_weight": 1.0, "lpips_weight": 1.0, "kl_weight": 1e-6, "gan_weight": 0.1,
    "disc_start": 0, "disc_lr": 1e-4, "ema": 0.0, "precision": "auto", "keep_checkpoints": 2,
    "steps": None, "epochs": None,
}
PRESETS: dict[str, dict[str, Any]] = {
    # The published recipe: ImageNet 256 px, 80 epochs at global batch 1024 (~100k steps).
    "paper": dict(COMMON, teacher="dinov2-b", vae="va-vae", resolution=256, batch_size=1024, micro_batch=32,
                  epochs=80, log_every=50, checkpoint_every=2000, sample_every=2000, stats_images=10000),
    # CPU smoke scale: a few hundred small steps in minutes.
    "tiny": dict(COMMON, teacher="dinov2-s", vae="tiny", resolution=64, batch_size=8, micro_batch=8,
                 num_images=2000, steps=300, log_every=10, checkpoint_every=50, sample_every=100,
                 stats_images=256),
}
# Options that may differ between a run and its resume without changing its result.
RUN_ONLY = ("workers", "quiet", "device", "log_every", "checkpoint_every", "sample_every", "keep_checkpoints",
            "steps", "epochs", "total_steps", "stats_images", "teacher_features", "preset")


# --------------------------------------------------------------------------------------------
#                                  The trained module
# --------------------------------------------------------------------------------------------


class SendVAE(nn.Module):
    """The VAE and its alignment mapper, trained together (the mapper is dropped afterwards)."""

    def __init__(self, vae: nn.Module, mapper: Mapper):
        super().__init__()
        self.vae = vae
        self.mapper = mapper

    def forward(self, images: torch.Tensor):
        posterior = self.vae.encode(images)
        z = posterior.sample()
        return self.vae.decode(z), posterior, self.mapper(z)


class Indexed(torch.utils.data.Dataset):
    """A source whose items also carry their row index (to look up cached teacher tokens)."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, label = self.source[index]
        return image, label, index


class TrainingDiverged(UserError):
    """A loss became NaN or infinite: stop, keep the last good checkpoint."""


# --------------------------------------------------------------------------------------------
#                                        Set-up
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _teacher_targets(cfg, registry, source, device):
    """A callable (images, indices) -> teacher tokens, from a cache or the teacher itself."""
    spec = registry.teacher(cfg["teacher"])
    if cfg.get("teacher_features"):
        from sendvae_cli.caches.features import TeacherFeatures

        cache = TeacherFeatures(Path(cfg["teacher_features"]), source, teacher=spec.name)
        return (lambda images, indices: cache.rows(indices).to(device)), cache.width, cache.grid
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        teacher = spec.build(weights=cfg.get("teacher_weights"), random_weights=cfg["random_weights"]).to(device)
    grid = teacher.token_grid(source.resolution)
    return (lambda images, indices: teacher(images).float()), teacher.width, grid


def micro_batch_seed(seed: int, step: int, micro: int) -> int:
    """The seed of one micro-batch's random numbers: a function of its place in training only."""
    return (seed * 2_654_435_761 + step * 40_503 + micro * 7_919 + 1) % (2**63 - 1)


def _grad_norm_clip(parameters, max_norm: float) -> torch.Tensor:
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm) if max_norm > 0 else torch.zeros(())


def total_steps(cfg, num_rows: int) -> int:
    if cfg.get("steps"):
        return int(cfg["steps"])
    if cfg.get("epochs"):
        return max(1, math.ceil(cfg["epochs"] * num_rows / cfg["batch_size"]))
    raise UserError("give --steps or --epochs")


# --------------------------------------------------------------------------------------------
#                                      Training
# --------------------------------------------------------------------------------------------


def train_vae(cfg: dict[str, Any], registry, out: Path) -> dict[str, Any]:
    from sendvae_cli.vae.discriminator import NLayerDiscriminator, load_discriminator
    from sendvae_cli.vae.losses import VAELoss
    from sendvae_cli.vae.lpips import LPIPS
    from sendvae_cli.vae.open import open_vae

    out = Path(out)
    dist = distributed.init(cfg["device"])
    show = dist.is_main and not cfg["quiet"]
    device = dist.device

    # Batch geometry: keep the global batch, whatever the number of processes.
    per_step = cfg["micro_batch"] * dist.world
    if cfg["batch_size"] % per_step:
        raise UserError(f"--batch-size {cfg['batch_size']}: must be a multiple of --micro-batch {cfg['micro_batch']} "
                        f"x {dist.world} process(es)")
    accumulation = cfg["batch_size"] // per_step

    source = open_images(cfg["data"], registry=registry, resolution=cfg["resolution"], num_images=cfg["num_images"],
                         seed=cfg["seed"], strict=cfg.get("strict", False))
    steps = total_steps(cfg, len(source))
    cfg = dict(cfg, total_steps=steps, accumulation=accumulation, world_size=dist.world,
               data_rows=len(source), row_order_sha256=source.row_order_sha256(), producer=f"sendvae {__version__}")
    # Rank 0 creates or checks the folder first; the others check it only once config.json is
    # there (checking while rank 0 writes it would see a half-made folder).
    ignore = RUN_ONLY + ("accumulation", "world_size", "producer")
    resumed = prepare_run_dir(out, cfg, ignore=ignore, is_main=True) if dist.is_main else False
    dist.barrier()
    if not dist.is_main:
        prepare_run_dir(out, cfg, ignore=ignore, is_main=False)

    # Models. Seeded so that a resumed run builds the same random parts before loading.
    torch.manual_seed(cfg["seed"])
    loaded = open_vae(cfg["vae"], registry, weights=cfg.get("vae_weights"))
    vae = loaded.model.to(device).train()
    targets, teacher_width, teacher_grid = _teacher_targets(cfg, registry, source, device)
    latent_grid = (cfg["resolution"] // vae.downsample,) * 2
    patch = cfg["mapper_patch"] or mapper_patch_size(vae.downsample)
    if (latent_grid[0] // patch, latent_grid[1] // patch) != tuple(teacher_grid) or latent_grid[0] % patch:
        raise UserError(describe_grid_mismatch(latent_grid, patch, tuple(teacher_grid), vae.downsample))
    mapper = Mapper(vae.latent_channels, teacher_width, patch_size=patch, depth=cfg["mapper_depth"],
                    noise=cfg["noise"]).to(device)
    model = SendVAE(vae, mapper)
    lpips = None
    if cfg["lpips_weight"] > 0:
        lpips = LPIPS(vgg_weights=cfg.get("lpips_vgg_weights"), lin_weights=cfg.get("lpips_lin_weights"),
                      random_weights=cfg["random_weights"]).to(device)
    discriminator = NLayerDiscriminator().to(device)
    if cfg.get("disc_weights"):
        load_discriminator(Path(cfg["disc_weights"]), discriminator)
    ema = EMA(vae, cfg["ema"]) if cfg["ema"] else None

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                                  weight_decay=cfg["weight_decay"])
    disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=cfg["disc_lr"], betas=(cfg["beta1"], cfg["beta2"]),
                                       weight_decay=0.0)
    modules = {"vae": vae, "mapper": mapper, "discriminator": discriminator}
    if ema is not None:
        modules["ema"] = ema.shadow

    checkpoints = Checkpoints(out / "checkpoints", keep=cfg["keep_checkpoints"])
    step = 0
    latest = checkpoints.latest()
    if latest is not None:
        state = checkpoints.load(latest, modules)
        optimizer.load_state_dict(state["optimizer"])
        disc_optimizer.load_state_dict(state["disc_optimizer"])
        step = int(state["step"])
        info(f"resuming {out} from {latest.name}", show)
    elif resumed:
        info(f"{out} has no checkpoint yet: starting from step 0", show)

    export_dir = out / "export"
    if step >= steps and (export_dir / "vae.json").exists():
        info(f"{out} is already complete ({step} steps, exported to {export_dir}); nothing to do", show)
        return {"out": str(out), "steps": step, "export": str(export_dir)}

    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        model = DDP(model, device_ids=ids)
        discriminator = DDP(discriminator, device_ids=ids)
    loss_fn = VAELoss(lpips, discriminator, recon=cfg["recon"], recon_weight=cfg["recon_weight"],
                      lpips_weight=cfg["lpips_weight"], kl_weight=cfg["kl_weight"], gan_weight=cfg["gan_weight"],
                      disc_start=cfg["disc_start"])

    metrics = MetricsLog(out / "metrics.jsonl", resume_step=step, enabled=dist.is_main)
    from sendvae_cli.data.source import to_model_range

    preview = to_model_range(torch.stack([source[i][0] for i in range(min(8, len(source)))]).to(device))
    sampler = StreamBatchSampler(len(source), cfg["micro_batch"], dist.world, dist.rank, accumulation,
                                 seed=cfg["seed"], start_step=step)
    # The loader gets its own generator: creating its iterator must not draw from the global RNG,
    # whose state the checkpoint restores (else a resumed run would drift from an uninterrupted one).
    loader = torch.utils.data.DataLoader(Indexed(source), batch_sampler=sampler, num_workers=cfg["workers"],
                                         pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg["seed"]))
    batches = iter(loader)

    def save(at_step: int) -> None:
        if dist.is_main:
            checkpoints.save(at_step, modules, {
                "optimizer": optimizer.state_dict(), "disc_optimizer": disc_optimizer.state_dict(),
            })
        dist.barrier()

    last_saved = step
    window: dict[str, float] = {}
    window_n, window_t0 = 0, time.perf_counter()
    with progress_bar("train-vae", total=steps, completed=step, unit="step", show=show) as bar:
        while step < steps:
            stash = []
            sums: dict[str, float] = {}
            for micro in range(accumulation):
                images, _, indices = next(batches)
                torch.manual_seed(micro_batch_seed(cfg["seed"], step, micro * dist.world + dist.rank))
                x = to_model_range(images.to(device, non_blocking=True))
                target = targets(x, indices)
                sync = nullcontext() if (micro == accumulation - 1 or dist.world == 1) else model.no_sync()
                with sync:
                    with _autocast(device, cfg["precision"]):
                        recon, posterior, predicted = model(x)
                    terms = loss_fn.generator_loss(x, recon, posterior, step)
                    align = alignment_loss(predicted, target)
                    total = terms["loss"] + cfg["align_weight"] * align
                    (total / accumulation).backward()
                stash.append((x, recon.detach()))
                for key, value in {**terms, "align": align.detach(), "total": total.detach()}.items():
                    if key != "loss":
                        sums[key] = sums.get(key, 0.0) + float(value) / accumulation

            # NaN guard: stop before the bad step touches the weights; the last checkpoint stays good.
            finite = torch.tensor([1.0 if all(math.isfinite(v) for v in sums.values()) else 0.0], device=device)
            if dist.world > 1:
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if finite.item() < 1:
                bad = ", ".join(f"{k}={v:.4g}" for k, v in sums.items())
                raise TrainingDiverged(f"loss is not finite at step {step} ({bad}); stopped. The last good checkpoint "
                                       f"is {checkpoints.latest() or 'none'}; lower --lr or check the data")
            sums["grad_norm"] = float(_grad_norm_clip(model.parameters(), cfg["grad_clip"]))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            for x, recon in stash:
                d_terms = loss_fn.discriminator_loss(x, recon, step)
                (d_terms["loss"] / accumulation).backward()
                sums["disc_loss"] = sums.get("disc_loss", 0.0) + float(d_terms["loss"].detach()) / accumulation
            _grad_norm_clip(discriminator.parameters(), cfg["grad_clip"])
            disc_optimizer.step()
            disc_optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(vae)
            step += 1
            bar.advance(1)

            for key, value in sums.items():
                window[key] = window.get(key, 0.0) + value
            window_n += 1
            if step % cfg["log_every"] == 0 or step == steps:
                elapsed = time.perf_counter() - window_t0
                row = {k: v / window_n for k, v in window.items()}
                row["images_per_s"] = window_n * cfg["batch_size"] / max(elapsed, 1e-9)
                metrics.write(step, row)
                bar.describe(f"train-vae align {row['align']:.3f} rec {row['recon']:.3f}")
                window, window_n, window_t0 = {}, 0, time.perf_counter()
            if dist.is_main and (step % cfg["sample_every"] == 0 or step == steps):
                with torch.no_grad():
                    shown = unwrap(model).vae
                    was_training = shown.training
                    shown.eval()
                    save_grid([preview, shown(preview, sample=False)[0]], out / "samples" / f"recon-{step:06d}.png")
                    shown.train(was_training)
            if step % cfg["checkpoint_every"] == 0 or step == steps:
                save(step)
                last_saved = step
    if last_saved != step:
        save(step)

    if dist.is_main:
        final_vae = ema.shadow if ema is not None else unwrap(model).vae
        export_trained(final_vae, export_dir, source, cfg, loaded, step, device)
        info(f"exported the trained VAE to {export_dir}", show)
    dist.barrier()
    return {"out": str(out), "steps": step, "export": str(export_dir)}


@torch.no_grad()
def latent_statistics(vae: nn.Module, source, count: int, device, batch: int = 32, seed: int = 0):
    """Per-channel mean and std of posterior samples over the first `count` rows (float64 sums)."""
    from sendvae_cli.data.source import to_model_range

    generator = torch.Generator(device=device).manual_seed(seed)
    total = s1 = s2 = None
    for lo in range(0, min(count, len(source)), batch):
        hi = min(lo + batch, count, len(source))
        x = to_model_range(torch.stack([source[i][0] for i in range(lo, hi)]).to(device))
        z = vae.encode(x).sample(generator).double()
        flat = z.transpose(0, 1).reshape(z.shape[1], -1)
        s1 = flat.sum(1) if s1 is None else s1 + flat.sum(1)
        s2 = (flat**2).sum(1) if s2 is None else s2 + (flat**2).sum(1)
        total = flat.shape[1] if total is None else total + flat.shape[1]
    mean = s1 / total
    std = (s2 / total - mean**2).clamp_min(0).sqrt()
    return mean.float().cpu(), std.float().cpu()


def export_trained(vae, folder: Path, source, cfg, loaded, step: int, device) -> None:
    from sendvae_cli.vae.export import export_vae

    was_training = vae.training
    vae.eval()
    mean, std = latent_statistics(vae, source, cfg["stats_images"], device, seed=cfg["seed"])
    vae.train(was_training)
    provenance = {
        "producer": f"sendvae {__version__} train-vae",
        "base": cfg["vae"],
        "base_provenance": getattr(loaded, "provenance", None),
        "teacher": cfg["teacher"],
        "steps": step,
        "resolution": cfg["resolution"],
        "data": cfg["data"],
        "latent_stats_images": min(cfg["stats_images"], len(source)),
        "ema": cfg["ema"],
    }
    export_vae(vae, folder, latent_mean=mean.tolist(), latent_std=std.tolist(), provenance=provenance)
