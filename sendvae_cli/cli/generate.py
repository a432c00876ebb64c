"""Generator commands: `sendvae train-sit` (SiT + REPA flow matching on a latent cache) and
`sendvae sample` (images from a trained generator) live here.

Shared options come from `sendvae_cli.cli.options`; each command checks its flags, builds the
pipeline's settings and runs it, as `cli/vae.py` does for train-vae.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sendvae_cli.cli import options as o
from sendvae_cli.cli.app import app, registry, user_errors
from sendvae_cli.errors import UserError


# ---- sample ---------------------------------------------------------------------------------
SAMPLER_PANEL = "Sampler"
LABEL_PANEL = "Labels"


@app.command()
@user_errors
def sample(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="A train-sit run folder, a generator export (sit.json) or a REPA/REPA-E SiT .pt checkpoint.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Sample folder: PNGs, samples.npz, sample.json (rerun the same command to resume).", rich_help_panel=o.RUN_PANEL)] = Path("samples"),
    num: Annotated[Optional[int], typer.Option("-n", "--num-samples", help="Images to draw (default 50000).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    preset: Annotated[Optional[str], typer.Option(help="paper: 50k balanced samples, SDE 250 steps, CFG 2.5 on [0, 0.75]. Explicit flags win.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale on all channels; 1 = none (default 1).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    mode: Annotated[Optional[str], typer.Option(help="ode (Euler / Heun) or sde (Euler-Maruyama, REPA's grid) (default ode).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps (default 50; the paper: SDE 250).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    heun: Annotated[bool, typer.Option("--heun", help="Heun's corrector for the ODE (2 x steps - 1 evaluations).", rich_help_panel=SAMPLER_PANEL)] = False,
    guidance_low: Annotated[Optional[float], typer.Option(help="Guide only steps starting at t >= this (t = 1 noise) (default 0).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    guidance_high: Annotated[Optional[float], typer.Option(help="Guide only steps starting at t <= this (default 1).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    labels: Annotated[Optional[str], typer.Option(help="balanced (exactly N / classes each, shuffled) or random (i.i.d.) (default balanced).", rich_help_panel=LABEL_PANEL, show_default=False)] = None,
    class_id: Annotated[Optional[int], typer.Option("--class", help="Draw every image of this class.", rich_help_panel=LABEL_PANEL, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the labels and of every sample's noise (sample i depends on seed and i only).", rich_help_panel=LABEL_PANEL)] = 0,
    grid: Annotated[Optional[str], typer.Option(help="Only a preview: KxM = K classes x M samples into OUT/grid.png, class ids written on it.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    vae: Annotated[Optional[str], typer.Option(help="The VAE to decode with (default: the one the export records; needed for a .pt).", rich_help_panel=o.VAE_PANEL, show_default=False)] = None,
    latent_stats: Annotated[Optional[Path], typer.Option(help="Latent statistics the model was trained with (REPA-E *-latents-stats.pt), for a .pt MODEL.", rich_help_panel=o.VAE_PANEL, show_default=False)] = None,
    force_vae: Annotated[bool, typer.Option("--force-vae", help="Decode with --vae even though its weights differ from the VAE MODEL was trained on.", rich_help_panel=o.VAE_PANEL)] = False,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per sampling batch and process (default: 256 on GPU, 16 on CPU).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    device: o.Device = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp64.", rich_help_panel=o.RUN_PANEL)] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the generator (pays off for long runs on GPU).", rich_help_panel=o.RUN_PANEL)] = False,
    quiet: o.Quiet = False,
) -> None:
    """Images from a generator: REPA's ODE/SDE samplers with CFG, class-balanced, resumable, into PNGs + an ADM .npz."""
    from sendvae_cli.generate.grid import parse_grid
    from sendvae_cli.generate.labels import SCHEMES

    from sendvae_cli.generate.presets import MODES, PRECISIONS, PRESETS

    if preset is not None and preset not in PRESETS:
        raise UserError(f"--preset {preset}: expected {' or '.join(PRESETS)}")
    paper = PRESETS[preset] if preset else {}

    def pick(value, key, default):
        return value if value is not None else paper.get(key, default)

    count, mode, steps = pick(num, "count", 50_000), pick(mode, "mode", "ode"), pick(steps, "steps", 50)
    cfg, low, high = pick(cfg, "cfg_scale", 1.0), pick(guidance_low, "guidance_low", 0.0), pick(guidance_high, "guidance_high", 1.0)
    labels_scheme = pick(labels, "labels", "balanced")
    o.positive(("-n", count), ("--steps", steps), ("--batch-size", batch_size))
    if mode not in MODES:
        raise UserError(f"--mode {mode}: expected {' or '.join(MODES)}")
    if heun and mode != "ode":
        raise UserError("--heun: Heun's corrector is for --mode ode only")
    if mode == "sde" and steps < 2:
        raise UserError(f"--steps {steps}: the SDE sampler needs at least 2 steps")
    if not cfg >= 1:
        raise UserError(f"--cfg {cfg}: expected 1 or more (1 = no guidance)")
    if not 0 <= low <= high <= 1:
        raise UserError(f"--guidance-low {low} / --guidance-high {high}: expected 0 <= low <= high <= 1 (flow time)")
    if labels_scheme not in SCHEMES:
        raise UserError(f"--labels {labels_scheme}: expected {' or '.join(SCHEMES)}")
    if class_id is not None and labels is not None:
        raise UserError("--class and --labels exclude each other")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: expected {', '.join(PRECISIONS)}")
    shape = None
    if grid is not None:
        try:
            shape = parse_grid(grid)
        except ValueError:
            raise UserError(f"--grid {grid}: expected KxM, e.g. 8x6 (K classes x M samples)") from None
    o.existing(("MODEL", model), ("--latent-stats", latent_stats))
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; expected a folder")

    from sendvae_cli.generate.pipeline import SampleSettings
    from sendvae_cli.generate.run import SampleRequest, run_sample

    settings = SampleSettings(count=count, mode=mode, steps=steps, heun=heun, cfg_scale=float(cfg),
                              guidance_low=float(low), guidance_high=float(high), labels=labels_scheme,
                              class_id=class_id, seed=seed, precision=precision)
    found = registry()
    run_sample(SampleRequest(model=model, out=out, settings=settings, batch_size=batch_size, vae=vae,
                             latent_stats=latent_stats, force_vae=force_vae, grid=shape, device=device,
                             compile=compile, quiet=quiet,
                             build=lambda name, arch: found.generator(name).build(**arch)))
