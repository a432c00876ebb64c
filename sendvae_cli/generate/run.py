"""`sendvae sample` after its flags are parsed: open MODEL, check what needs the model, run."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from sendvae_cli import distributed
from sendvae_cli.errors import UserError
from sendvae_cli.generate.folder import GRID
from sendvae_cli.generate.pipeline import SampleSettings, resolve_precision, sample_grid, sample_to_folder
from sendvae_cli.progress import info


@dataclass(frozen=True)
class SampleRequest:
    model: Path
    out: Path
    settings: SampleSettings                 # precision may still be "auto"
    batch_size: int | None = None
    vae: str | None = None
    latent_stats: Path | None = None
    force_vae: bool = False
    grid: tuple[int, int] | None = None      # (classes, samples per class)
    device: str = "auto"
    compile: bool = False
    quiet: bool = False
    build: Callable[[str, dict], torch.nn.Module] | None = None  # plugin generators: the registry's builder


def check_labels(settings: SampleSettings, num_classes: int) -> None:
    if not num_classes:
        if settings.class_id is not None:
            raise UserError(f"--class {settings.class_id}: the model is unconditional (no classes)")
        if settings.cfg_scale > 1:
            raise UserError(f"--cfg {settings.cfg_scale}: the model is unconditional; guidance needs classes")
    elif settings.class_id is not None and not 0 <= settings.class_id < num_classes:
        raise UserError(f"--class {settings.class_id}: the model has {num_classes} classes (0 to {num_classes - 1})")


def run_sample(request: SampleRequest) -> Path:
    from sendvae_cli.generate.source import open_generator

    dist = distributed.init(request.device)
    try:
        settings = replace(request.settings, precision=resolve_precision(request.settings.precision, dist.device))
        gen = open_generator(request.model, vae=request.vae, latent_stats=request.latent_stats,
                             force_vae=request.force_vae, build=request.build)
        check_labels(settings, gen.num_classes)
        if settings.cfg_channels is not None and settings.cfg_channels > gen.latent_shape[0]:
            raise UserError(f"--cfg-channels {settings.cfg_channels}: MODEL samples {gen.latent_shape[0]}-channel latents")
        if dist.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        batch_size = request.batch_size or (256 if dist.device.type == "cuda" else 16)
        show = not request.quiet
        if request.grid is not None:
            path = request.out / GRID
            if dist.is_main:
                rows, columns = request.grid
                sample_grid(gen, settings, path, dist.device, rows=rows, columns=columns, batch_size=batch_size,
                            compile=request.compile)
                info(f"grid of {rows} x {columns} samples: {path}", show)
            return path
        from sendvae_cli.locks import hold_output_lock

        sample_to_folder(gen, settings, request.out, dist, batch_size=batch_size, compile=request.compile, show=show,
                         guard=lambda out: hold_output_lock(out, enabled=dist.is_main))
        return request.out
    finally:
        distributed.shutdown()
