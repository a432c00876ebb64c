"""The `sendvae` command line: one thin function per command.

Each command parses and validates its options, then calls a pipeline. Heavy libraries (torch,
timm, open_clip, transformers) are imported inside the commands that need them, so `--help`
and `sendvae plugins` answer at once. A `UserError` anywhere becomes one red line and exit 2.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from sendvae_cli import __version__
from sendvae_cli.errors import UserError

app = typer.Typer(
    name="sendvae",
    help="Send-VAE: VAEs aligned to vision foundation models, latent caches, SiT generators, FID and probes.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

DATA_PANEL = "Data"
TEACHER_PANEL = "Teacher"
RUN_PANEL = "Run"


def _print_error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)


def user_errors(command):
    """Report UserError as one line (exit code 2) instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            _print_error(str(error))
            raise typer.Exit(2) from None

    return wrapper


def _registry():
    from sendvae_cli.progress import warn
    from sendvae_cli.registry import get_registry

    registry = get_registry()
    if registry.problems and not getattr(registry, "_reported", False):
        for problem in registry.problems:
            warn(problem)
        registry._reported = True  # each problem is reported once per process
    return registry


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"sendvae {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Send-VAE toolkit."""


# --------------------------------------------------------------------------------------------
# plugins
# --------------------------------------------------------------------------------------------
@app.command()
@user_errors
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
) -> None:
    """List installed plugins and what they register: teachers, VAE bases, generators, datasets."""
    registry = _registry()
    if as_json:
        typer.echo(json.dumps(_plugins_as_dict(registry), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Plugins", title_justify="left")
    for column in ("plugin", "version", "origin", "registers"):
        table.add_column(column)
    for info in registry.plugins.values():
        what = ", ".join(f"{len(v)} {k.replace('_', ' ')}(s)" for k, v in info.registered.items())
        table.add_row(info.name, info.version, info.origin, f"[red]failed: {info.error}[/red]" if info.error else what or "-")
    console.print(table)

    teachers = Table(title="Teachers", title_justify="left")
    for column in ("name", "family", "width", "patch", "weights source", "licence", "plugin"):
        teachers.add_column(column)
    for name, entry in registry.components["teacher"].items():
        s = entry.spec
        teachers.add_row(name, s.family, str(s.width), str(s.patch_size), s.source, s.licence, entry.plugin)
    console.print(teachers)

    for kind, title in (("vae_base", "VAE bases"), ("generator", "Generators"), ("dataset", "Datasets")):
        table = Table(title=title, title_justify="left")
        for column in ("name", "description", "plugin"):
            table.add_column(column)
        for name, entry in registry.components[kind].items():
            table.add_row(name, entry.spec.description, entry.plugin)
        if not registry.components[kind]:
            table.add_row("-", "none installed", "-")
        console.print(table)


def _plugins_as_dict(registry) -> dict:
    out = {"plugins": [], "teachers": [], "vae_bases": [], "generators": [], "datasets": []}
    for info in registry.plugins.values():
        out["plugins"].append({"name": info.name, "version": info.version, "origin": info.origin,
                               "error": info.error, "registers": info.registered})
    for kind, key in (("teacher", "teachers"), ("vae_base", "vae_bases"), ("generator", "generators"),
                      ("dataset", "datasets")):
        for name, entry in registry.components[kind].items():
            row = {"name": name, "plugin": entry.plugin, "description": getattr(entry.spec, "description", "")}
            if kind == "teacher":
                s = entry.spec
                row.update(family=s.family, width=s.width, patch_size=s.patch_size, source=s.source, licence=s.licence)
            out[key].append(row)
    return out


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------
def _default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1)))


def _open_data(data, registry, *, resolution, num_images, seed, strict, root):
    """DATA as an image source; skipped unreadable images are reported once (rank 0)."""
    from sendvae_cli.data.open import open_images
    from sendvae_cli.progress import warn

    source = open_images(data, registry=registry, resolution=resolution, num_images=num_images, seed=seed,
                         strict=strict, root=str(root) if root else None)
    skipped = getattr(source, "skipped_summary", lambda: None)()
    if skipped and _is_main():
        warn(skipped)
    return source


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@app.command()
@user_errors
def extract(
    data: Annotated[str, typer.Argument(metavar="DATA", help="A folder of images (class sub-folders give labels) or a dataset name, e.g. shapes.", show_default=False)],
    teacher: Annotated[str, typer.Option(help="Teacher name (see `sendvae plugins`).", rich_help_panel=TEACHER_PANEL)] = "dinov2-b",
    out: Annotated[Path, typer.Option(help="Output HDF5 file.", rich_help_panel=RUN_PANEL)] = Path("feats.h5"),
    resolution: Annotated[int, typer.Option(help="Image side in pixels after ADM centre crop (multiple of 16).", rich_help_panel=DATA_PANEL)] = 256,
    num_images: Annotated[Optional[int], typer.Option(help="Use only the first N images (for a named dataset: its size).", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed for generated datasets and --random-weights.", rich_help_panel=DATA_PANEL)] = 0,
    root: Annotated[Optional[Path], typer.Option(help="Where a named on-disk dataset lives.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    strict: Annotated[bool, typer.Option(help="Fail on an unreadable image instead of skipping it.", rich_help_panel=DATA_PANEL)] = False,
    teacher_weights: Annotated[Optional[Path], typer.Option(help="Local weights file or folder for the teacher.", rich_help_panel=TEACHER_PANEL, show_default=False)] = None,
    random_weights: Annotated[bool, typer.Option(help="Build the teacher untrained (smoke runs, benchmarks).", rich_help_panel=TEACHER_PANEL)] = False,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass and process (default: 64 on GPU, 16 on CPU).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes decoding images (default: CPU cores, at most 8).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUN_PANEL)] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.", rich_help_panel=RUN_PANEL)] = "auto",
    block_rows: Annotated[int, typer.Option(help="Rows per resumable block: the unit of work of one process.", rich_help_panel=RUN_PANEL)] = 1024,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=RUN_PANEL)] = False,
) -> None:
    """Teacher patch tokens of every image into an HDF5 cache (resumable: rerun to continue)."""
    if batch_size is not None and batch_size <= 0:
        raise UserError(f"--batch-size {batch_size}: expected a positive number")
    if block_rows <= 0:
        raise UserError(f"--block-rows {block_rows}: expected a positive number")
    if workers is None:
        workers = _default_workers()
    if workers < 0:
        raise UserError(f"--workers {workers}: expected 0 or more")
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"--precision {precision}: expected auto, fp32 or bf16")
    if teacher_weights is not None and random_weights:
        raise UserError("--teacher-weights and --random-weights exclude each other")
    registry = _registry()
    spec = registry.teacher(teacher)
    if teacher_weights is not None and not teacher_weights.expanduser().exists():
        raise UserError(f"--teacher-weights {teacher_weights}: no such file or folder")

    from sendvae_cli.data.extract import ExtractOptions, extract as run_extract
    from sendvae_cli.progress import warn

    source = _open_data(data, registry, resolution=resolution, num_images=num_images, seed=seed, strict=strict,
                        root=root)
    if random_weights and _is_main():
        warn(f"teacher {spec.name!r} has random weights (--random-weights): its tokens carry no meaning")
    options = ExtractOptions(batch_size=batch_size, workers=workers, teacher_weights=teacher_weights,
                             random_weights=random_weights, seed=seed, device=device, precision=precision,
                             block_rows=block_rows, quiet=quiet)
    run_extract(source, spec, out, options)


# --------------------------------------------------------------------------------------------
# train-vae
# --------------------------------------------------------------------------------------------
VAE_PANEL = "VAE"
LOSS_PANEL = "Losses"
MAPPER_PANEL = "Mapper and alignment"
OPT_PANEL = "Optimisation"


@app.command("train-vae")
@user_errors
def train_vae(
    data: Annotated[str, typer.Argument(metavar="DATA", help="A folder of images or a dataset name, e.g. shapes.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Run folder (rerun the same command to resume).", rich_help_panel=RUN_PANEL)] = Path("runs/vae"),
    preset: Annotated[str, typer.Option(help="Defaults bundle: paper (the published recipe) or tiny (CPU smoke scale). Explicit flags win.", rich_help_panel=RUN_PANEL)] = "paper",
    teacher: Annotated[Optional[str], typer.Option(help="Teacher name (paper: dinov2-b).", rich_help_panel=TEACHER_PANEL, show_default=False)] = None,
    teacher_weights: Annotated[Optional[Path], typer.Option(help="Local weights file or folder for the teacher.", rich_help_panel=TEACHER_PANEL, show_default=False)] = None,
    teacher_features: Annotated[Optional[Path], typer.Option(help="Teacher tokens from `sendvae extract` instead of running the teacher.", rich_help_panel=TEACHER_PANEL, show_default=False)] = None,
    random_weights: Annotated[bool, typer.Option(help="Teacher and LPIPS networks untrained (smoke runs, benchmarks).", rich_help_panel=TEACHER_PANEL)] = False,
    vae: Annotated[Optional[str], typer.Option(help="VAE base name, exported VAE folder, diffusers folder or .pt file (paper: va-vae).", rich_help_panel=VAE_PANEL, show_default=False)] = None,
    vae_weights: Annotated[Optional[Path], typer.Option(help="Local weights for the VAE base.", rich_help_panel=VAE_PANEL, show_default=False)] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Image side in pixels (paper: 256).", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    num_images: Annotated[Optional[int], typer.Option(help="Use only the first N images.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order, noise and initialisation.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (overrides --epochs).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data (paper: 80).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch (paper: 1024), kept on any number of GPUs by gradient accumulation.", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    micro_batch: Annotated[Optional[int], typer.Option(help="Images per forward pass and process (paper: 32).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (paper: 3e-4).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Gradient norm clip, 0 = off (paper: 1.0).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    ema: Annotated[Optional[float], typer.Option(help="EMA decay of the VAE weights, 0 = off (default off).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    align_weight: Annotated[Optional[float], typer.Option(help="Weight of the alignment loss (paper: 1.0).", rich_help_panel=MAPPER_PANEL, show_default=False)] = None,
    mapper_depth: Annotated[Optional[int], typer.Option(help="ViT blocks in the mapper; 0 = patch embedding + projector (paper: 1).", rich_help_panel=MAPPER_PANEL, show_default=False)] = None,
    mapper_patch: Annotated[Optional[int], typer.Option(help="Mapper patch size (default: 16 / VAE downsampling).", rich_help_panel=MAPPER_PANEL, show_default=False)] = None,
    no_noise: Annotated[bool, typer.Option("--no-noise", help="Turn off noise injection before the mapper.", rich_help_panel=MAPPER_PANEL)] = False,
    recon: Annotated[Optional[str], typer.Option(help="Reconstruction loss: l1 or mse (paper: l1).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    lpips_weight: Annotated[Optional[float], typer.Option(help="LPIPS weight (paper: 1.0).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    kl_weight: Annotated[Optional[float], typer.Option(help="KL weight (paper: 1e-6).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    gan_weight: Annotated[Optional[float], typer.Option(help="PatchGAN hinge loss weight (paper: 0.1).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    disc_start: Annotated[Optional[int], typer.Option(help="Step from which the GAN losses count (REPA-E: 0).", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    disc_weights: Annotated[Optional[Path], typer.Option(help="Start the discriminator from a REPA-E discriminator checkpoint.", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    lpips_vgg_weights: Annotated[Optional[Path], typer.Option(help="Local vgg16-397923af.pth for LPIPS.", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    lpips_lin_weights: Annotated[Optional[Path], typer.Option(help="Local LPIPS v0.1 vgg.pth lin weights.", rich_help_panel=LOSS_PANEL, show_default=False)] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Steps between metrics.jsonl rows.", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Steps between checkpoints.", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Steps between reconstruction grids.", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    stats_images: Annotated[Optional[int], typer.Option(help="Images over which the exported latent statistics are computed (paper: 10000).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes (default: CPU cores, at most 8).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUN_PANEL)] = "auto",
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16.", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=RUN_PANEL)] = False,
) -> None:
    """Fine-tune a VAE so its latent aligns with a frozen teacher through the Send-VAE mapper."""
    from sendvae_cli.train.run_config import resolve
    from sendvae_cli.train.vae_trainer import PRESETS

    if preset not in PRESETS:
        raise UserError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--micro-batch", micro_batch),
                        ("--resolution", resolution), ("--log-every", log_every), ("--num-images", num_images),
                        ("--checkpoint-every", checkpoint_every), ("--sample-every", sample_every),
                        ("--stats-images", stats_images)):
        if value is not None and value <= 0:
            raise UserError(f"{name} {value}: expected a positive number")
    for name, value in (("--lr", lr), ("--epochs", epochs)):
        if value is not None and value <= 0:
            raise UserError(f"{name} {value}: expected a positive number")
    if recon is not None and recon not in ("l1", "mse"):
        raise UserError(f"--recon {recon}: expected l1 or mse")
    if precision is not None and precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"--precision {precision}: expected auto, fp32 or bf16")
    if teacher_weights is not None and random_weights:
        raise UserError("--teacher-weights and --random-weights exclude each other")
    for name, path in (("--teacher-weights", teacher_weights), ("--vae-weights", vae_weights),
                       ("--disc-weights", disc_weights), ("--teacher-features", teacher_features)):
        if path is not None and not path.expanduser().exists():
            raise UserError(f"{name} {path}: no such file or folder")
    explicit = {
        "teacher": teacher, "vae": vae, "resolution": resolution, "num_images": num_images, "seed": seed,
        "steps": steps, "epochs": epochs, "batch_size": batch_size, "micro_batch": micro_batch, "lr": lr,
        "grad_clip": grad_clip, "ema": ema, "align_weight": align_weight, "mapper_depth": mapper_depth,
        "mapper_patch": mapper_patch, "noise": False if no_noise else None, "recon": recon,
        "lpips_weight": lpips_weight, "kl_weight": kl_weight, "gan_weight": gan_weight, "disc_start": disc_start,
        "log_every": log_every, "checkpoint_every": checkpoint_every, "sample_every": sample_every,
        "precision": precision, "stats_images": stats_images,
    }
    if steps is not None:
        explicit["epochs"] = None
    cfg = resolve(PRESETS[preset], explicit)
    if steps is None and epochs is not None:
        cfg["steps"] = None
    if cfg["micro_batch"] > cfg["batch_size"]:
        cfg["micro_batch"] = cfg["batch_size"]
    cfg.update({
        "data": data, "preset": preset, "random_weights": random_weights, "device": device, "quiet": quiet,
        "workers": _default_workers() if workers is None else workers,
        "teacher_weights": str(teacher_weights) if teacher_weights else None,
        "teacher_features": str(teacher_features) if teacher_features else None,
        "vae_weights": str(vae_weights) if vae_weights else None,
        "disc_weights": str(disc_weights) if disc_weights else None,
        "lpips_vgg_weights": str(lpips_vgg_weights) if lpips_vgg_weights else None,
        "lpips_lin_weights": str(lpips_lin_weights) if lpips_lin_weights else None,
    })
    registry = _registry()
    registry.teacher(cfg["teacher"])  # unknown names fail before anything heavy is imported
    if random_weights and _is_main():
        from sendvae_cli.progress import warn

        warn("--random-weights: the teacher and the LPIPS network are untrained; the run is a smoke test only")

    from sendvae_cli.train.vae_trainer import train_vae as run

    run(cfg, registry, out)


# --------------------------------------------------------------------------------------------
# cache-latents
# --------------------------------------------------------------------------------------------
@app.command("cache-latents")
@user_errors
def cache_latents(
    data: Annotated[Optional[str], typer.Argument(metavar="DATA", help="A folder of images (class sub-folders give labels) or a dataset name, e.g. shapes.", show_default=False)] = None,
    vae: Annotated[Optional[str], typer.Option(help="VAE base name, exported VAE folder (train-vae), diffusers folder or REPA-E .pt file.", rich_help_panel="VAE", show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Output HDF5 latent cache.", rich_help_panel=RUN_PANEL)] = Path("latents.h5"),
    flip: Annotated[bool, typer.Option("--flip", help="Also store the latents of the horizontally flipped images.", rich_help_panel=DATA_PANEL)] = False,
    info: Annotated[Optional[Path], typer.Option("--info", help="Print what a latent cache holds (attributes, counts, completeness, statistics) and exit.", show_default=False)] = None,
    resolution: Annotated[int, typer.Option(help="Image side in pixels after ADM centre crop (multiple of 16).", rich_help_panel=DATA_PANEL)] = 256,
    num_images: Annotated[Optional[int], typer.Option(help="Use only the first N images (for a named dataset: its size).", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed for generated datasets and --random-weights.", rich_help_panel=DATA_PANEL)] = 0,
    root: Annotated[Optional[Path], typer.Option(help="Where a named on-disk dataset lives.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    strict: Annotated[bool, typer.Option(help="Fail on an unreadable image instead of skipping it.", rich_help_panel=DATA_PANEL)] = False,
    vae_weights: Annotated[Optional[Path], typer.Option(help="Local weights for the VAE base.", rich_help_panel="VAE", show_default=False)] = None,
    random_weights: Annotated[bool, typer.Option(help="Build the VAE base untrained (smoke runs, benchmarks).", rich_help_panel="VAE")] = False,
    compression: Annotated[Optional[str], typer.Option(help="Compress the cache: gzip or lzf (default none: fastest reads).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass and process (default: 64 on GPU, 16 on CPU).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes decoding images (default: CPU cores, at most 8).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUN_PANEL)] = "auto",
    precision: Annotated[str, typer.Option(help="auto (= fp32: the cache stores float16), fp32 or bf16.", rich_help_panel=RUN_PANEL)] = "auto",
    block_rows: Annotated[int, typer.Option(help="Rows per resumable block: the unit of work of one process.", rich_help_panel=RUN_PANEL)] = 1024,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=RUN_PANEL)] = False,
) -> None:
    """VAE latents (posterior mean and std) of every image into an HDF5 cache with whole-set statistics (resumable: rerun to continue)."""
    if info is not None:
        if data is not None:
            raise UserError(f"--info {info}: takes no DATA argument (got {data!r})")
        from sendvae_cli.data.latents import describe_cache

        for line in describe_cache(info):
            typer.echo(line)
        return
    if data is None:
        raise UserError("DATA: missing; expected a folder of images or a dataset name (or --info LATENTS.h5)")
    if vae is None:
        raise UserError("--vae: missing; expected a VAE base name (e.g. va-vae), an exported VAE folder, "
                        "a diffusers folder or a .pt file")
    for name, value in (("--batch-size", batch_size), ("--block-rows", block_rows)):
        if value is not None and value <= 0:
            raise UserError(f"{name} {value}: expected a positive number")
    if workers is None:
        workers = _default_workers()
    if workers < 0:
        raise UserError(f"--workers {workers}: expected 0 or more")
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"--precision {precision}: expected auto, fp32 or bf16")
    if compression is not None and compression not in ("gzip", "lzf"):
        raise UserError(f"--compression {compression}: expected gzip or lzf")
    if vae_weights is not None and random_weights:
        raise UserError("--vae-weights and --random-weights exclude each other")
    if vae_weights is not None and not vae_weights.expanduser().exists():
        raise UserError(f"--vae-weights {vae_weights}: no such file or folder")
    if out.expanduser().is_dir():
        raise UserError(f"--out {out}: is a folder; expected the path of an .h5 file")
    registry = _registry()

    from sendvae_cli.data.latents import CacheLatentsOptions, cache_latents as run_cache
    from sendvae_cli.progress import warn

    source = _open_data(data, registry, resolution=resolution, num_images=num_images, seed=seed, strict=strict,
                        root=root)
    if random_weights and _is_main():
        warn(f"VAE {vae!r} has random weights (--random-weights): its latents carry no meaning")
    options = CacheLatentsOptions(vae=vae, vae_weights=vae_weights, random_weights=random_weights, seed=seed,
                                  flip=flip, batch_size=batch_size, workers=workers, device=device,
                                  precision=precision, block_rows=block_rows, compression=compression, quiet=quiet)
    run_cache(source, out, options, registry)


# --------------------------------------------------------------------------------------------
# fid
# --------------------------------------------------------------------------------------------
@app.command()
@user_errors
def fid(
    samples: Annotated[str, typer.Argument(metavar="SAMPLES", help="A folder of images or an ADM .npz (arr_0: uint8 N x H x W x 3).", show_default=False)],
    ref: Annotated[str, typer.Option("--ref", help="Reference: a folder of images, an ADM reference batch .npz (mu, sigma, mu_s, sigma_s, arr_0), or statistics saved by --save-stats.", rich_help_panel=DATA_PANEL, show_default=False)],
    save_stats: Annotated[Optional[Path], typer.Option(help="Write the statistics of the reference (and its precision/recall features) here, for reuse as --ref.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    num_samples: Annotated[Optional[int], typer.Option(help="Use only the first N samples (default: all; papers use 50,000).", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    inception_weights: Annotated[Optional[Path], typer.Option(help="Local weights-inception-2015-12-05-6726825d.pth (the torch-fidelity release file), or a folder holding it.", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="JSON file with every figure and the protocol (default: SAMPLES.fid.json beside SAMPLES).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass (default: 250 on GPU, 32 on CPU).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes decoding image folders (default: CPU cores, at most 8).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUN_PANEL)] = "auto",
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse reference statistics cached by content ($SENDVAE_CACHE/fid).", rich_help_panel=RUN_PANEL)] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=RUN_PANEL)] = False,
) -> None:
    """FID, sFID, Inception Score, precision and recall as the ADM suite computes them (docs/fid.md)."""
    from rich.console import Console

    from sendvae_cli.eval.fid import FidOptions, evaluate, render_table

    options = FidOptions(samples=samples, ref=ref, save_stats=save_stats, inception_weights=inception_weights,
                         batch_size=batch_size, device=device, num_samples=num_samples, json_out=json_out,
                         workers=workers, cache=cache, quiet=quiet)
    Console().print(render_table(evaluate(options)))


# --------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------
PROBE_PANEL = "Probe"


@app.command()
@user_errors
def probe(
    data: Annotated[str, typer.Argument(metavar="DATA", help="An attribute dataset (celeba, deepfashion, awa, shapes) or a CSV of image paths and attribute columns.", show_default=False)],
    vae: Annotated[Optional[list[str]], typer.Option("--vae", help="[LABEL=]VAE to probe: exported folder (train-vae), base name, diffusers folder or .pt; repeat to compare.", rich_help_panel="Features", show_default=False)] = None,
    features: Annotated[Optional[list[str]], typer.Option("--features", help="[LABEL=]teacher:NAME (pooled patch tokens, for reference) or vae:REF; repeatable.", rich_help_panel="Features", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder: probe.json, probe.png, results/, features/ (default runs/probe-DATA).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    root: Annotated[Optional[Path], typer.Option(help="Where the dataset lives (its official layout, see docs/data.md).", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Image side after ADM centre crop (default: the training resolution exported VAEs record, else 256).", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    num_images: Annotated[Optional[int], typer.Option(help="Use about N images, keeping the split proportions (shapes: its size, default 10000).", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed for generated data, random weights, the probe's initialisation and batch order.", rich_help_panel=DATA_PANEL)] = 0,
    strict: Annotated[bool, typer.Option(help="Fail on an unreadable image instead of skipping it.", rich_help_panel=DATA_PANEL)] = False,
    random_weights: Annotated[bool, typer.Option(help="Build teachers and VAE bases given by name untrained (smoke runs, baselines).", rich_help_panel="Features")] = False,
    teacher_weights: Annotated[Optional[Path], typer.Option(help="Local weights file or folder for the teacher of --features teacher:NAME.", rich_help_panel="Features", show_default=False)] = None,
    epochs: Annotated[int, typer.Option(help="Most epochs of probe training (early stopping usually ends it sooner).", rich_help_panel=PROBE_PANEL)] = 200,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without a lower validation loss.", rich_help_panel=PROBE_PANEL)] = 10,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.", rich_help_panel=PROBE_PANEL)] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.", rich_help_panel=PROBE_PANEL)] = 1e-4,
    probe_batch_size: Annotated[int, typer.Option(help="Feature rows per probe training step.", rich_help_panel=PROBE_PANEL)] = 256,
    memory_gb: Annotated[float, typer.Option(help="Feature tables up to this size (float16) are held in memory; larger ones stream from the cache.", rich_help_panel=PROBE_PANEL)] = 4.0,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Feature caches (default OUT/features); share one between probe runs to reuse features.", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass while encoding (default: 64 on GPU, 16 on CPU).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes decoding images (default: CPU cores, at most 8).", rich_help_panel=RUN_PANEL, show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (encoding and probe training).", rich_help_panel=RUN_PANEL)] = "auto",
    block_rows: Annotated[int, typer.Option(help="Rows per resumable block of a feature cache.", rich_help_panel=RUN_PANEL)] = 1024,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=RUN_PANEL)] = False,
) -> None:
    """Attribute linear probes on VAE latents: rank VAEs before training a generator (docs/probe.md)."""
    from sendvae_cli.eval.probe_features import parse_request

    requests = [parse_request(v, "--vae") for v in vae or []] + [parse_request(f, "--features") for f in features or []]
    if not requests:
        raise UserError("--vae: missing; pass the VAE(s) to probe (repeat --vae to compare), or --features teacher:NAME")
    for name, value in (("--epochs", epochs), ("--patience", patience), ("--probe-batch-size", probe_batch_size),
                        ("--block-rows", block_rows), ("--batch-size", batch_size)):
        if value is not None and value <= 0:
            raise UserError(f"{name} {value}: expected a positive number")
    for name, value in (("--lr", lr), ("--memory-gb", memory_gb)):
        if not value > 0:
            raise UserError(f"{name} {value}: expected a positive number")
    if weight_decay < 0:
        raise UserError(f"--weight-decay {weight_decay}: expected 0 or more")
    if workers is None:
        workers = _default_workers()
    if workers < 0:
        raise UserError(f"--workers {workers}: expected 0 or more")
    if root is not None and not root.expanduser().exists():
        raise UserError(f"--root {root}: no such file or folder")
    if teacher_weights is not None and not teacher_weights.expanduser().exists():
        raise UserError(f"--teacher-weights {teacher_weights}: no such file or folder")
    if teacher_weights is not None and random_weights:
        raise UserError("--teacher-weights and --random-weights exclude each other")
    registry = _registry()

    from rich.console import Console

    from sendvae_cli.eval.linear_probe import ProbeSettings
    from sendvae_cli.eval.probe import ProbeOptions, data_name, render_table, run_probe

    name = data_name(data)
    settings = ProbeSettings(epochs=epochs, patience=patience, lr=lr, weight_decay=weight_decay,
                             batch_size=probe_batch_size, seed=seed, memory_gb=memory_gb)
    options = ProbeOptions(data=data, requests=requests, out=out or Path("runs") / f"probe-{name}", root=root,
                           resolution=resolution, num_images=num_images, seed=seed, random_weights=random_weights,
                           teacher_weights=teacher_weights, strict=strict, cache_dir=cache_dir, batch_size=batch_size, workers=workers, device=device,
                           block_rows=block_rows, settings=settings, quiet=quiet)
    summary = run_probe(options, registry)
    if summary is not None:
        Console().print(render_table(summary))
        if not quiet:
            Console(stderr=True).print(f"wrote {options.out / 'probe.json'} and {options.out / 'probe.png'}",
                                       highlight=False)


def main() -> None:
    app(prog_name="sendvae")


if __name__ == "__main__":
    main()
