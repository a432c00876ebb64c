"""`sendvae train-vae`: fine-tune a VAE so its latent aligns with a frozen teacher (Send-VAE).

One optimizer step (the loop around it, resuming and DDP are `train/loop.py`'s):
    for each micro-batch (gradient accumulation keeps the global batch on fewer GPUs):
        posterior = VAE.encode(x); z = sample; x_hat = VAE.decode(z)
        L = L_VAE(x, x_hat, posterior) + align_weight * (1 - cos(mapper(z), teacher(x)))
        (before --align-start, mapper(z.detach()): the mapper learns, the encoder does not follow)
    clip, AdamW step (VAE + mapper); then the discriminator's hinge step on the same batch.
In the last --decoder-only share of the steps the encoder runs without gradients and only the
decoder learns, from L_VAE, at a learning rate falling linearly to 0: the latent a generator
learns is fixed from then on, and the decoder converges on it (the alignment is only logged).
Everything that decides the result (weights, both optimizers, EMA, data position) is in each
checkpoint, and the random numbers of a micro-batch (posterior sample, noise injection) come from
a seed derived from (seed, step, global micro-batch index). So rerunning the command after a
crash continues exactly where the last checkpoint left off (a killed and resumed run ends with
the same weights as an uninterrupted one), ranks never share noise, and DDP over N processes
draws the same numbers as gradient accumulation over N micro-batches in one process.

With --eval-data, every --eval-every steps and at the end the VAE (its EMA when there is one, as
exported) gets the evaluation row of `eval/vae_row.py` in metrics.jsonl; --keep-best refreshes
OUT/best (an export) whenever that row is the best so far, and the end draws OUT/eval.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sendvae_cli import __version__
from sendvae_cli.data.open import open_images
from sendvae_cli.images import to_model_range
from sendvae_cli.errors import UserError
from sendvae_cli.train import loop
from sendvae_cli.train.checkpoint import unwrap
from sendvae_cli.train.loop import Parts, StepContext, clip_grad_norm
from sendvae_cli.train.optim import adamw
from sendvae_cli.train.preview import save_grid, spread_rows
from sendvae_cli.train.vae_config import VAETrainConfig
from sendvae_cli.vae.mapper import Mapper, alignment_loss, describe_grid_mismatch, mapper_patch_size

# --------------------------------------------------------------------------------------------
#                                  The trained module
# --------------------------------------------------------------------------------------------


class SendVAE(nn.Module):
    """The VAE and its alignment mapper, trained together (the mapper is dropped afterwards)."""

    def __init__(self, vae: nn.Module, mapper: Mapper):
        super().__init__()
        self.vae = vae
        self.mapper = mapper

    def forward(self, images: torch.Tensor, align_encoder: bool = True, decoder_only: bool = False):
        """(reconstruction, posterior, mapper tokens). With align_encoder False the mapper sees the
        latent detached: it learns to predict the teacher while only L_VAE shapes the encoder. With
        decoder_only only the decoder learns: the encoder runs without gradients, and the mapper,
        whose loss is then only logged, in eval mode too (its BatchNorm statistics stay)."""
        if decoder_only:
            with torch.no_grad():
                posterior = self.vae.encode(images)
                z = posterior.sample()
                self.mapper.eval()
                tokens = self.mapper(z)
                self.mapper.train(self.training)
            return self.vae.decode(z), posterior, tokens
        posterior = self.vae.encode(images)
        z = posterior.sample()
        return self.vae.decode(z), posterior, self.mapper(z if align_encoder else z.detach())


class Indexed(torch.utils.data.Dataset):
    """A source whose items also carry their row index (to look up cached teacher tokens)."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, label = self.source[index]
        return image, label, index


def _teacher_targets(cfg: VAETrainConfig, registry, source, device):
    """A callable (images, indices) -> teacher tokens, from a cache or the teacher itself."""
    spec = registry.teacher(cfg.teacher)
    if cfg.teacher_features:
        from sendvae_cli.caches.features import TeacherTokens

        cache = TeacherTokens(Path(cfg.teacher_features), source, teacher=spec.name)
        return (lambda images, indices: cache.rows(indices).to(device)), cache.width, cache.grid
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        teacher = spec.build(weights=cfg.teacher_weights, random_weights=cfg.random_weights).to(device)
    grid = teacher.token_grid(source.resolution)
    return (lambda images, indices: teacher(images).float()), teacher.width, grid


# --------------------------------------------------------------------------------------------
#                                      Training
# --------------------------------------------------------------------------------------------


class VAETrainer(loop.Trainer):
    name = "train-vae"

    def __init__(self, cfg: VAETrainConfig, registry, out: Path):
        self.config, self.registry, self.out = cfg, registry, Path(out)
        self.export_dir = self.out / "export"
        self.best_dir = self.out / "best"
        self.held_out = None  # the evaluation's images and extractor, opened at the first evaluation
        self.best: float | None = None  # --keep-best's best value so far
        self.best_read = False  # whether `best` has been read from the rows a resumed run kept

    def rows(self):
        cfg = self.config
        self.source = open_images(cfg.data, registry=self.registry, resolution=cfg.resolution,
                                  num_images=cfg.num_images, seed=cfg.seed)
        if cfg.eval_data:  # a wrong --eval-data fails now, not at the first evaluation
            from sendvae_cli.eval.vae_row import open_held_out_images

            open_held_out_images(eval_options(cfg), self.registry, cfg.resolution)
        return Indexed(self.source)

    def data_facts(self) -> dict[str, Any]:
        return {"data_rows": len(self.source), "row_order_sha256": self.source.row_order_sha256()}

    def build(self, ctx: StepContext) -> Parts:
        from sendvae_cli.vae.discriminator import NLayerDiscriminator, load_discriminator
        from sendvae_cli.vae.lpips import LPIPS
        from sendvae_cli.vae.open import open_vae

        cfg, device = self.config, ctx.device
        self.loaded = open_vae(cfg.vae, self.registry, weights=cfg.vae_weights)
        vae = self.loaded.model.to(device).train()
        if cfg.logvar_init is not None:
            if self.loaded.provenance.get("format") == "random-init":
                vae.init_posterior_logvar(cfg.logvar_init)
            elif ctx.dist.is_main and not cfg.quiet:
                from sendvae_cli.progress import info

                info(f"--logvar-init {cfg.logvar_init:g}: not applied, {cfg.vae} starts from trained weights")
        # oneDNN's CPU convolutions run about 1.2x faster on channels-last tensors at these sizes
        # (fp32 and bf16, benchmarks/train_vae_step.py); on CUDA cuDNN chooses its own layout.
        self.memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        vae.to(memory_format=self.memory_format)
        self.targets, teacher_width, teacher_grid = _teacher_targets(cfg, self.registry, self.source, device)
        latent_grid = (cfg.resolution // vae.downsample,) * 2
        patch = cfg.mapper_patch or mapper_patch_size(vae.downsample)
        if (latent_grid[0] // patch, latent_grid[1] // patch) != tuple(teacher_grid) or latent_grid[0] % patch:
            raise UserError(describe_grid_mismatch(latent_grid, patch, tuple(teacher_grid), vae.downsample))
        mapper = Mapper(vae.latent_channels, teacher_width, patch_size=patch, depth=cfg.mapper_depth,
                        width=cfg.mapper_width, projector_dim=cfg.mapper_hidden, noise=cfg.noise).to(device)
        self.vae, self.model = vae, SendVAE(vae, mapper)
        self.lpips = None
        if cfg.lpips_weight > 0:
            self.lpips = LPIPS(vgg_weights=cfg.lpips_vgg_weights, lin_weights=cfg.lpips_lin_weights,
                               random_weights=cfg.random_weights).to(device)
        self.discriminator = NLayerDiscriminator().to(device)
        if cfg.disc_weights:
            load_discriminator(Path(cfg.disc_weights), self.discriminator)
        self.optimizer = adamw(self.model.parameters(), device, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                               weight_decay=cfg.weight_decay)
        self.disc_optimizer = adamw(self.discriminator.parameters(), device, lr=cfg.disc_lr,
                                    betas=(cfg.beta1, cfg.beta2), weight_decay=0.0)
        # The preview images are spread across the classes (file order puts one class first).
        self.preview_rows = spread_rows([self.source.label(i) for i in range(len(self.source))], 8)
        self.preview = to_model_range(torch.stack([self.source[i][0] for i in self.preview_rows]).to(device))
        names = self.source.class_names
        self.preview_captions = [names[self.source.label(i)] if names and self.source.label(i) >= 0
                                 else self.source.row_id(i).rsplit("/", 1)[-1] for i in self.preview_rows]
        return Parts(modules={"vae": vae, "mapper": mapper, "discriminator": self.discriminator},
                     optimizers={"optimizer": self.optimizer, "disc_optimizer": self.disc_optimizer}, ema_of=vae)

    def already_complete(self, step: int) -> str | None:
        if (self.export_dir / "vae.json").exists():
            return f"{self.out} is already complete ({step} steps, exported to {self.export_dir}); nothing to do"
        return None

    def prepare(self, ctx: StepContext) -> None:
        from sendvae_cli.vae.losses import VAELoss

        cfg = self.config
        self.decoder_from = cfg.decoder_phase(ctx.total_steps)
        if self.decoder_from <= 0 < ctx.total_steps:
            raise UserError(f"--decoder-only {cfg.decoder_only:g}: leaves none of the run's {ctx.total_steps} steps "
                            f"to train the encoder")
        if ctx.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            # In the decoder-only phase the encoder and mapper get no gradient: DDP must look for
            # such parameters in each step's graph, or it waits for their gradients forever. The
            # search costs a graph walk per step, so only a run that has the phase asks for it.
            self.model = DDP(self.model, device_ids=ids,
                             find_unused_parameters=self.decoder_from < ctx.total_steps)
            self.discriminator = DDP(self.discriminator, device_ids=ids)
        self.loss = VAELoss(self.lpips, self.discriminator, recon=cfg.recon, recon_weight=cfg.recon_weight,
                            lpips_weight=cfg.lpips_weight, kl_weight=cfg.kl_weight, gan_weight=cfg.gan_weight,
                            disc_start=cfg.disc_start)
        self.stash: list[tuple[torch.Tensor, torch.Tensor]] = []  # this step's (images, reconstructions)

    def micro_step(self, batch, ctx: StepContext):
        loss_fn = self.loss
        if ctx.micro == 0:
            self.stash = []
        images, _, indices = batch
        x = to_model_range(images.to(ctx.device, non_blocking=True)).contiguous(memory_format=self.memory_format)
        target = self.targets(x, indices)
        decoder_only = ctx.step >= self.decoder_from
        with ctx.sync(self.model):
            with ctx.autocast():
                recon, posterior, predicted = self.model(x, align_encoder=ctx.step >= self.config.align_start,
                                                         decoder_only=decoder_only)
            terms = loss_fn.generator_loss(x, recon, posterior, ctx.step)
            align = alignment_loss(predicted, target)
            total = terms["loss"] + (0.0 if decoder_only else self.config.align_weight) * align
            (total / ctx.accumulation).backward()
        self.stash.append((x, recon.detach()))
        return {**{k: v for k, v in terms.items() if k != "loss"}, "align": align.detach(), "total": total.detach()}

    def optimizer_step(self, ctx: StepContext) -> dict[str, float]:
        cfg, loss_fn = self.config, self.loss
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(ctx)  # decoder-only: AdamW skips what has no gradient
        out = {"grad_norm": float(clip_grad_norm(self.model.parameters(), cfg.grad_clip))}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.gan_weight > 0:  # at --gan-weight 0 nothing reads the discriminator: skip its two passes
            for x, recon in self.stash:
                d_terms = loss_fn.discriminator_loss(x, recon, ctx.step)
                (d_terms["loss"] / ctx.accumulation).backward()
                out["disc_loss"] = out.get("disc_loss", 0.0) + float(d_terms["loss"].detach()) / ctx.accumulation
            clip_grad_norm(self.discriminator.parameters(), cfg.grad_clip)
            self.disc_optimizer.step()
            self.disc_optimizer.zero_grad(set_to_none=True)
        self.stash = []
        return out

    def learning_rate(self, ctx: StepContext) -> float:
        """--lr, and in the decoder-only phase a fall from it, linear, to lr / n at its last step (n
        its steps). Set at every step, so that the optimizer's state holds no schedule of its own."""
        cfg = self.config
        if ctx.step < self.decoder_from:
            return cfg.lr
        return cfg.lr * (ctx.total_steps - ctx.step) / (ctx.total_steps - self.decoder_from)

    def describe(self, row) -> str:
        return f"train-vae align {row['align']:.3f} rec {row['recon']:.3f}"

    def sample(self, step: int, ctx: StepContext) -> dict[str, Any]:
        with torch.no_grad():
            shown = unwrap(self.model).vae
            was_training = shown.training
            shown.eval()
            grid = save_grid([self.preview, shown(self.preview, sample=False)[0]],
                             self.out / "samples" / f"recon-{step:06d}.png",
                             title=f"step {step}: images (top), reconstructions (bottom)",
                             captions=self.preview_captions)
            shown.train(was_training)
        return {"recon": grid}

    def evaluates(self, step: int, total: int) -> bool:
        cfg = self.config
        return bool(cfg.eval_data) and (step % cfg.eval_every == 0 or step == total)

    def evaluated(self, row) -> bool:
        from sendvae_cli.eval.vae_row import is_row

        return is_row(row)

    def evaluate(self, step: int, ctx: StepContext) -> dict[str, Any] | None:
        from sendvae_cli.eval import vae_row
        from sendvae_cli.progress import info

        cfg = self.config
        show = ctx.dist.is_main and not cfg.quiet
        if self.held_out is None:
            self.held_out = vae_row.HeldOut(eval_options(cfg), self.registry, cfg.resolution, ctx.dist)
        info(f"evaluating at step {step} ({len(self.held_out.source)} images of {cfg.eval_data})", show)
        vae = _exported_vae(self.model, ctx)
        row = vae_row.evaluate(vae, self.held_out)
        if row is not None and cfg.keep_best:
            self._keep_best(vae, row, step, ctx)
        return row

    def _keep_best(self, vae, row: dict[str, Any], step: int, ctx: StepContext) -> None:
        """Export to OUT/best when `row` is the best so far; before the row is logged, so that a
        logged row always has its export (a kill in between redoes both, identically)."""
        from sendvae_cli.eval import vae_row
        from sendvae_cli.train.metrics import read_metrics

        cfg = self.config
        if not self.best_read:
            logged = read_metrics(self.out / "metrics.jsonl") if (self.out / "metrics.jsonl").exists() else []
            self.best, self.best_read = vae_row.best_so_far(logged, cfg.keep_best), True
        key = vae_row.PREFIX + vae_row.BEST[cfg.keep_best][0]
        if vae_row.improves(row[key], self.best, cfg.keep_best):
            export_trained(vae, self.best_dir, self.source, cfg, self.loaded, step, ctx.device,
                           extra={"best": {"metric": key, "value": row[key], "step": step}})
            self.best = row[key]

    def write_output(self, step: int, ctx: StepContext) -> None:
        from sendvae_cli.progress import info

        export_trained(_exported_vae(self.model, ctx), self.export_dir, self.source, self.config, self.loaded, step,
                       ctx.device)
        info(f"exported the trained VAE to {self.export_dir}", ctx.dist.is_main and not self.config.quiet)
        if self.config.eval_data:
            from sendvae_cli.eval.curves import draw_curves

            chart = draw_curves(self.out / "metrics.jsonl", self.out / "eval.png", title=f"{self.out.name}: "
                                f"evaluation on {self.config.eval_data}")
            info(f"drew the evaluation curves in {chart}", ctx.dist.is_main and not self.config.quiet)

    def summary(self, step: int) -> dict[str, Any]:
        return {"out": str(self.out), "steps": step, "export": str(self.export_dir)}


def train_vae(cfg: VAETrainConfig, registry, out: Path) -> dict[str, Any]:
    return loop.run(VAETrainer(cfg, registry, out), out)


def _exported_vae(model: nn.Module, ctx: StepContext) -> nn.Module:
    """The VAE an export holds: the EMA's when there is one."""
    return ctx.ema.shadow if ctx.ema is not None else unwrap(model).vae


def eval_options(cfg: VAETrainConfig):
    """The evaluation's options; the extractor is the run's teacher unless another is named."""
    from sendvae_cli.eval.vae_row import EvalOptions

    extractor = cfg.eval_extractor or cfg.teacher
    return EvalOptions(data=cfg.eval_data, root=cfg.eval_root, images=cfg.eval_images, extractor=extractor,
                       probe_epochs=cfg.eval_probe_epochs,
                       teacher_weights=cfg.teacher_weights if extractor == cfg.teacher else None,
                       random_weights=cfg.random_weights)


@torch.no_grad()
def latent_statistics(vae: nn.Module, source, count: int, device, batch: int = 32, seed: int = 0):
    """Per-channel mean and std of posterior samples over the first `count` rows (float64 sums)."""
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


def export_trained(vae, folder: Path, source, cfg: VAETrainConfig, loaded, step: int, device,
                   extra: dict[str, Any] | None = None) -> None:
    from sendvae_cli.vae.export import export_vae

    was_training = vae.training
    vae.eval()
    mean, std = latent_statistics(vae, source, cfg.stats_images, device, seed=cfg.seed)
    vae.train(was_training)
    provenance = {
        "producer": f"sendvae {__version__} train-vae",
        "base": cfg.vae,
        "base_provenance": getattr(loaded, "provenance", None),
        "teacher": cfg.teacher,
        "steps": step,
        "resolution": cfg.resolution,
        "data": cfg.data,
        "latent_stats_images": min(cfg.stats_images, len(source)),
        "ema": cfg.ema,
        **(extra or {}),
    }
    export_vae(vae, folder, latent_mean=mean.tolist(), latent_std=std.tolist(), provenance=provenance)
