"""`sendvae train-vae`: fine-tune a VAE aligned to a frozen teacher (docs/train-vae.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sendvae_cli.cli import options as o
from sendvae_cli.cli.app import app, registry, user_errors
from sendvae_cli.errors import UserError
from sendvae_cli.ranks import is_main

LOSS_PANEL = "Losses"
MAPPER_PANEL = "Mapper and alignment"
OPT_PANEL = "Optimisation"
EVAL_PANEL = "Evaluation while training"


@app.command("train-vae")
@user_errors
def train_vae(
    data: o.Data,
    out: Annotated[Path, typer.Option(help="Run folder (rerun the same command to resume).", rich_help_panel=o.RUN_PANEL)] = Path("runs/vae"),
    preset: Annotated[str, typer.Option(help="Defaults bundle: paper (the published recipe) or tiny (CPU smoke scale). Explicit flags win.", rich_help_panel=o.RUN_PANEL)] = "paper",
    teacher: Annotated[Optional[str], typer.Option(help="Teacher name (paper: dinov2-b).", rich_help_panel=o.TEACHER_PANEL, show_default=False)] = None,
    teacher_weights: o.TeacherWeights = None,
    teacher_features: Annotated[Optional[Path], typer.Option(help="Teacher tokens from `sendvae extract` instead of running the teacher.", rich_help_panel=o.TEACHER_PANEL, show_default=False)] = None,
    random_weights: Annotated[bool, typer.Option(help="Teacher and LPIPS networks untrained (smoke runs, benchmarks).", rich_help_panel=o.TEACHER_PANEL)] = False,
    vae: Annotated[Optional[str], typer.Option(help="VAE base name, exported VAE folder, diffusers folder or .pt file (paper: va-vae).", rich_help_panel=o.VAE_PANEL, show_default=False)] = None,
    vae_weights: o.VaeWeights = None,
    resolution: Annotated[Optional[int], typer.Option(help="Image side in pixels (default: the resolution an exported --vae was trained at, else the preset's; paper: 256).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    num_images: o.NumImages = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order, noise and initialisation.", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (overrides --epochs).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data (paper: 80).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch (paper: 1024), kept on any number of GPUs by gradient accumulation.", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    micro_batch: Annotated[Optional[int], typer.Option(help="Images per forward pass and process (default: the preset value, paper 32, a per-device memory choice lowered until it divides the global batch over the processes).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (paper: 3e-4).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Gradient norm clip, 0 = off (paper: 1.0; tiny: 0.25).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    ema: Annotated[Optional[float], typer.Option(help="EMA decay of the VAE weights, 0 = off (default off).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    decoder_only: Annotated[Optional[float], typer.Option(help="The steps at the end in which only the decoder learns, its learning rate falling linearly to 0: a share of the steps below 1 (0.2), or a number of steps (200). The encoder, and the latent a generator learns, stay as they are, while the reconstructions sharpen (default 0; the main job gives the last 200 of 1,400 tiny steps, docs/train-vae.md).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    align_weight: Annotated[Optional[float], typer.Option(help="Weight of the alignment loss (paper: 1.0).", rich_help_panel=MAPPER_PANEL, show_default=False)] = None,
    align_start: Annotated[Optional[int], typer.Option(help="Step from which the alignment shapes the encoder; before it the mapper learns on the detached latent (default 0: from the start, as the paper's fine-tuning of a pretrained VAE).", rich_help_panel=MAPPER_PANEL, show_default=False)] = None,
    mapper_depth: Annotated[Optional[int], typer.Option(help="ViT blocks in the mapper; 0 = patch embedding + projector (paper: 1).", rich_help_panel=MAPPER_PANEL, show_default=False)] = None,
    mapper_patch: Annotated[Optional[int], typer.Option(help="Mapper patch size (default: 16 / VAE downsampling).", rich_help_panel=MAPPER_PANEL, show_default=False)] = None,
    mapper_width: Annotated[Optional[int], typer.Option(help="Width of the mapper's ViT blocks (default: the teacher's width, as in the paper).", rich_help_panel=MAPPER_PANEL, show_default=False)] = None,
    mapper_hidden: Annotated[Optional[int], typer.Option(help="Hidden width of the mapper's projector MLP (paper: 2048).", rich_help_panel=MAPPER_PANEL, show_default=False)] = None,
    no_noise: Annotated[bool, typer.Option("--no-noise", help="Turn off noise injection before the mapper.", rich_help_panel=MAPPER_PANEL)] = False,
    logvar_init: Annotated[Optional[str], typer.Option(help="A VAE from random weights starts its posterior's log-variance here (tiny: -4, a std of 0.14); 'none' keeps PyTorch's init (a std near 1; the paper preset's); ignored for trained weights.", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    recon: Annotated[Optional[str], typer.Option(help="Reconstruction loss: l1 or mse (paper: l1).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    lpips_weight: Annotated[Optional[float], typer.Option(help="LPIPS weight (paper: 1.0).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    kl_weight: Annotated[Optional[float], typer.Option(help="KL weight (paper: 1e-6).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    gan_weight: Annotated[Optional[float], typer.Option(help="PatchGAN hinge loss weight (paper: 0.1).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    disc_start: Annotated[Optional[int], typer.Option(help="Step from which the GAN losses count (REPA-E: 0).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    disc_weights: Annotated[Optional[Path], typer.Option(help="Start the discriminator from a REPA-E discriminator checkpoint.", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    lpips_vgg_weights: Annotated[Optional[Path], typer.Option(help="Local vgg16-397923af.pth for LPIPS.", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    lpips_lin_weights: Annotated[Optional[Path], typer.Option(help="Local LPIPS v0.1 vgg.pth lin weights.", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Steps between metrics.jsonl rows.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Steps between checkpoints.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Steps between reconstruction grids.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    stats_images: Annotated[Optional[int], typer.Option(help="Images over which the exported latent statistics are computed (paper: 10000).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    eval_data: Annotated[Optional[str], typer.Option(help="Evaluate on held-out images of this attribute dataset (celeba, deepfashion, awa, shapes, or a CSV): probe macro-F1, PSNR, SSIM and rFD, logged to metrics.jsonl (docs/train-vae.md).", rich_help_panel=EVAL_PANEL, show_default=False)] = None,
    eval_root: Annotated[Optional[Path], typer.Option(help="Where --eval-data lives (a dataset on disk).", rich_help_panel=EVAL_PANEL, show_default=False)] = None,
    eval_images: Annotated[Optional[int], typer.Option(help="Held-out images, split train/val/test as the dataset splits them (paper: 1000; tiny: 250).", rich_help_panel=EVAL_PANEL, show_default=False)] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Steps between evaluations, and one at the end (paper: 5000; tiny: 300).", rich_help_panel=EVAL_PANEL, show_default=False)] = None,
    eval_extractor: Annotated[Optional[str], typer.Option(help="Feature space of rFD: inception or a teacher name, e.g. tv-mobilenet-v2 (default: the run's teacher).", rich_help_panel=EVAL_PANEL, show_default=False)] = None,
    eval_probe_epochs: Annotated[Optional[int], typer.Option(help="Most epochs of the probe's training, as sendvae probe --epochs (early stopping usually ends it sooner).", rich_help_panel=EVAL_PANEL, show_default=False)] = None,
    keep_best: Annotated[Optional[str], typer.Option(help="probe or rfd: keep the export of the best evaluation by that figure in OUT/best.", rich_help_panel=EVAL_PANEL, show_default=False)] = None,
    workers: o.Workers = None,
    device: o.Device = "auto",
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    keep: o.Keep = None,
    tracker: o.Trackers = None,
    config: o.ConfigFile = None,
    quiet: o.Quiet = False,
) -> None:
    """Fine-tune a VAE so its latent aligns with a frozen teacher through the Send-VAE mapper."""
    from sendvae_cli.train.vae_config import PRESETS, VAETrainConfig

    if preset not in PRESETS:
        raise UserError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
    o.positive(("--steps", steps), ("--batch-size", batch_size), ("--micro-batch", micro_batch),
               ("--resolution", resolution), ("--log-every", log_every), ("--num-images", num_images),
               ("--checkpoint-every", checkpoint_every), ("--sample-every", sample_every),
               ("--stats-images", stats_images), ("--lr", lr), ("--epochs", epochs), ("--keep", keep),
               ("--mapper-width", mapper_width), ("--mapper-hidden", mapper_hidden), ("--eval-every", eval_every),
               ("--eval-images", eval_images), ("--eval-probe-epochs", eval_probe_epochs))
    check_evaluation(eval_data, eval_root=eval_root, eval_images=eval_images, eval_every=eval_every,
                     eval_extractor=eval_extractor, eval_probe_epochs=eval_probe_epochs, keep_best=keep_best)
    if decoder_only is not None and not (0 <= decoder_only < 1 or (decoder_only >= 1 and decoder_only == int(decoder_only))):
        raise UserError(f"--decoder-only {decoder_only:g}: expected a share of the steps (at least 0, below 1) "
                        f"or a whole number of steps")
    if decoder_only is not None and decoder_only >= 1 and steps is not None and decoder_only >= steps:
        raise UserError(f"--decoder-only {decoder_only:g}: leaves none of the {steps} --steps to train the encoder")
    if align_start is not None and align_start < 0:
        raise UserError(f"--align-start {align_start}: expected a step >= 0")
    if mapper_width is not None and mapper_width % 64:
        raise UserError(f"--mapper-width {mapper_width}: expected a multiple of 64 (one attention head per 64)")
    from sendvae_cli.train.trackers import check_names

    trackers = check_names(tracker)
    if vae is not None:
        resolution = o.resolution_from_vae(vae, resolution, quiet)
    if recon is not None and recon not in ("l1", "mse"):
        raise UserError(f"--recon {recon}: expected l1 or mse")
    o.check_precision(precision)
    o.exclusive_weights("--teacher-weights", teacher_weights, random_weights)
    o.existing(("--teacher-weights", teacher_weights), ("--vae-weights", vae_weights),
               ("--disc-weights", disc_weights), ("--teacher-features", teacher_features))
    logvar_init = parse_logvar_init(logvar_init)
    run = dict(data=data, random_weights=random_weights, device=device, quiet=quiet,
               workers=o.workers_or_default(workers), teacher_weights=teacher_weights,
               teacher_features=teacher_features, vae_weights=vae_weights, disc_weights=disc_weights,
               lpips_vgg_weights=lpips_vgg_weights, lpips_lin_weights=lpips_lin_weights, tracker=trackers,
               eval_data=eval_data, eval_root=eval_root, eval_extractor=eval_extractor, keep_best=keep_best)
    flags = o.preset_flags(VAETrainConfig, locals(), run, noise=False if no_noise else None, keep_checkpoints=keep)
    cfg = VAETrainConfig.from_flags(preset, flags, **run)
    found = registry()
    found.teacher(cfg.teacher)  # unknown names fail before anything heavy is imported
    if eval_extractor not in (None, "inception"):
        try:
            found.teacher(eval_extractor)
        except UserError as error:
            raise UserError(f"--eval-extractor {eval_extractor}: {error} (or inception)") from None
    if random_weights and is_main():
        from sendvae_cli.progress import warn

        warn("--random-weights: the teacher and the LPIPS network are untrained; the run is a smoke test only")

    from sendvae_cli.train.vae_trainer import train_vae as run

    run(cfg, found, out)


def check_evaluation(eval_data: str | None, *, keep_best: str | None, **given) -> None:
    """The evaluation options go with --eval-data; --keep-best names a figure."""
    if eval_data is None:
        for name, value in dict(given, keep_best=keep_best).items():
            if value is not None:
                raise UserError(f"--{name.replace('_', '-')}: goes with --eval-data DATA (the attribute dataset "
                                f"whose held-out images the evaluation uses)")
    if keep_best is not None and keep_best not in ("probe", "rfd"):
        raise UserError(f"--keep-best {keep_best}: expected probe (the highest probe macro-F1) or rfd (the lowest rFD)")


def parse_logvar_init(value: str | None) -> float | str | None:
    """--logvar-init: a number, or 'none' (PyTorch's init, even where the preset sets one)."""
    from sendvae_cli.train.vae_config import KEEP_INIT  # here: the config module imports torch

    if value is None or value.strip().lower() == KEEP_INIT:
        return None if value is None else KEEP_INIT
    try:
        return float(value)
    except ValueError:
        raise UserError(f"--logvar-init {value}: expected a number or 'none'") from None

