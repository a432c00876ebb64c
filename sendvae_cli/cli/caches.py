"""`sendvae extract` and `sendvae cache-latents`: a model over every image into a resumable row cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sendvae_cli.cli import options as o
from sendvae_cli.cli.app import app, open_data, registry, user_errors
from sendvae_cli.errors import UserError
from sendvae_cli.ranks import is_main


@app.command()
@user_errors
def extract(
    data: o.Data,
    teacher: Annotated[str, typer.Option(help="Teacher name (see `sendvae plugins`).", rich_help_panel=o.TEACHER_PANEL)] = "dinov2-b",
    out: Annotated[Path, typer.Option(help="Output HDF5 file.", rich_help_panel=o.RUN_PANEL)] = Path("feats.h5"),
    resolution: o.Resolution = 256,
    num_images: o.NumImages = None,
    seed: o.Seed = 0,
    root: o.Root = None,
    strict: o.Strict = False,
    teacher_weights: o.TeacherWeights = None,
    random_weights: Annotated[bool, typer.Option(help="Build the teacher untrained (smoke runs, benchmarks).", rich_help_panel=o.TEACHER_PANEL)] = False,
    batch_size: o.BatchSize = None,
    workers: o.Workers = None,
    device: o.Device = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.", rich_help_panel=o.RUN_PANEL)] = "auto",
    block_rows: o.BlockRows = 1024,
    quiet: o.Quiet = False,
) -> None:
    """Teacher patch tokens of every image into an HDF5 cache (resumable: rerun to continue)."""
    o.positive(("--batch-size", batch_size), ("--block-rows", block_rows))
    workers = o.workers_or_default(workers)
    o.check_precision(precision)
    o.exclusive_weights("--teacher-weights", teacher_weights, random_weights)
    found = registry()
    spec = found.teacher(teacher)
    o.existing(("--teacher-weights", teacher_weights))

    from sendvae_cli.caches.extract import ExtractOptions, extract as run_extract
    from sendvae_cli.progress import warn

    source = open_data(data, found, resolution=resolution, num_images=num_images, seed=seed, strict=strict, root=root)
    if random_weights and is_main():
        warn(f"teacher {spec.name!r} has random weights (--random-weights): its tokens carry no meaning")
    settings = ExtractOptions(batch_size=batch_size, workers=workers, teacher_weights=teacher_weights,
                              random_weights=random_weights, seed=seed, device=device, precision=precision,
                              block_rows=block_rows, quiet=quiet)
    run_extract(source, spec, out, settings)


@app.command("cache-latents")
@user_errors
def cache_latents(
    data: o.OptionalData = None,
    vae: Annotated[Optional[str], typer.Option(help="VAE base name, exported VAE folder (train-vae), diffusers folder or REPA-E .pt file.", rich_help_panel=o.VAE_PANEL, show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Output HDF5 latent cache.", rich_help_panel=o.RUN_PANEL)] = Path("latents.h5"),
    flip: Annotated[bool, typer.Option("--flip", help="Also store the latents of the horizontally flipped images.", rich_help_panel=o.DATA_PANEL)] = False,
    info: Annotated[Optional[Path], typer.Option("--info", help="Print what a latent cache holds (attributes, counts, completeness, statistics) and exit.", show_default=False)] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Image side after ADM centre crop (default: the resolution an exported VAE was trained at, else 256).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    num_images: o.NumImages = None,
    seed: o.Seed = 0,
    root: o.Root = None,
    strict: o.Strict = False,
    vae_weights: o.VaeWeights = None,
    random_weights: Annotated[bool, typer.Option(help="Build the VAE base untrained (smoke runs, benchmarks).", rich_help_panel=o.VAE_PANEL)] = False,
    compression: Annotated[Optional[str], typer.Option(help="Compress the cache: gzip or lzf (default none: fastest reads).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    batch_size: o.BatchSize = None,
    workers: o.Workers = None,
    device: o.Device = "auto",
    precision: Annotated[str, typer.Option(help="auto (= fp32: the cache stores float16), fp32 or bf16.", rich_help_panel=o.RUN_PANEL)] = "auto",
    block_rows: o.BlockRows = 1024,
    quiet: o.Quiet = False,
) -> None:
    """VAE latents (posterior mean and std) of every image into an HDF5 cache with whole-set statistics (resumable: rerun to continue)."""
    if info is not None:
        if data is not None:
            raise UserError(f"--info {info}: takes no DATA argument (got {data!r})")
        from sendvae_cli.caches.latents import describe_cache

        for line in describe_cache(info):
            typer.echo(line)
        return
    if data is None:
        raise UserError("DATA: missing; expected a folder of images or a dataset name (or --info LATENTS.h5)")
    if vae is None:
        raise UserError("--vae: missing; expected a VAE base name (e.g. va-vae), an exported VAE folder, "
                        "a diffusers folder or a .pt file")
    o.positive(("--batch-size", batch_size), ("--block-rows", block_rows))
    workers = o.workers_or_default(workers)
    o.check_precision(precision)
    if compression is not None and compression not in ("gzip", "lzf"):
        raise UserError(f"--compression {compression}: expected gzip or lzf")
    o.exclusive_weights("--vae-weights", vae_weights, random_weights)
    o.existing(("--vae-weights", vae_weights))
    if out.expanduser().is_dir():
        raise UserError(f"--out {out}: is a folder; expected the path of an .h5 file")
    found = registry()
    resolution = o.resolution_from_vae(vae, resolution, quiet) or DEFAULT_RESOLUTION

    from sendvae_cli.caches.latents import CacheLatentsOptions, cache_latents as run_cache
    from sendvae_cli.progress import warn

    source = open_data(data, found, resolution=resolution, num_images=num_images, seed=seed, strict=strict, root=root)
    if random_weights and is_main():
        warn(f"VAE {vae!r} has random weights (--random-weights): its latents carry no meaning")
    settings = CacheLatentsOptions(vae=vae, vae_weights=vae_weights, random_weights=random_weights, seed=seed,
                                   flip=flip, batch_size=batch_size, workers=workers, device=device,
                                   precision=precision, block_rows=block_rows, compression=compression, quiet=quiet)
    run_cache(source, out, settings, found)


DEFAULT_RESOLUTION = 256
