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
from sendvae_cli.ranks import is_main


MODEL_PANEL = "Model and REPA"
OPT_PANEL = "Optimisation"
PREVIEW_PANEL = "Sample grids"


@app.command("train-sit")
@user_errors
def train_sit(
    latents: Annotated[Path, typer.Argument(metavar="LATENTS", help="A latent cache from `sendvae cache-latents` (or a REPA-E latent .h5).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Run folder (rerun the same command to resume); OUT/export is the generator export.", rich_help_panel=o.RUN_PANEL)] = Path("runs/sit"),
    preset: Annotated[str, typer.Option(help="Defaults bundle: paper (SiT-XL/1, REPA on dinov2-b at depth 8, batch 256, 400k steps) or tiny (CPU minutes). Explicit flags win.", rich_help_panel=o.RUN_PANEL)] = "paper",
    model: Annotated[Optional[str], typer.Option(help="Generator name, e.g. SiT-XL/1, SiT-B/2, LightningDiT-XL/1 (paper: SiT-XL/1; see `sendvae plugins`).", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from these weights: a generator export or run, or a REPA/REPA-E or LightningDiT .pt (projectors it lacks start fresh).", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", "--enc-type", help="REPA teacher (paper: dinov2-b).", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    teacher_weights: o.TeacherWeights = None,
    teacher_features: Annotated[Optional[Path], typer.Option(help="Teacher tokens from `sendvae extract` of the images the cache was made from (matched by row id).", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    images: Annotated[Optional[str], typer.Option(help="The images the cache was made from (folder or dataset name): the teacher runs on them on the fly (matched by row id; flipped image for a flipped latent).", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    root: Annotated[Optional[Path], typer.Option(help="Where the dataset that --images names lives on disk.", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    random_weights: Annotated[bool, typer.Option(help="Untrained teacher (smoke runs, tests, benchmarks).", rich_help_panel=MODEL_PANEL)] = False,
    proj_weight: Annotated[Optional[float], typer.Option("--proj-weight", "--proj-coeff", help="Weight of the REPA loss; 0 = no REPA, no teacher (paper: 0.5).", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    encoder_depth: Annotated[Optional[int], typer.Option(help="Block whose tokens REPA aligns (default: the generator's, 8 for L/XL, 4 for S/B).", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    cfg_prob: Annotated[Optional[float], typer.Option("--cfg-prob", help="Share of labels dropped to the null class, for classifier-free guidance (paper: 0.1).", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    qk_norm: Annotated[Optional[bool], typer.Option("--qk-norm/--no-qk-norm", help="Normalise queries and keys (default: the generator's own, off for SiT and LightningDiT; refused by a generator without the option).", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    attention: Annotated[Optional[str], typer.Option(help="Attention backend: auto (xformers on CUDA when installed, else SDPA), xformers or sdpa; refused by a generator without the choice.", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    num_classes: Annotated[Optional[int], typer.Option(help="Classes of the label embedding; for a cache without labels this trains unconditionally (every label is the null class).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    flip: Annotated[Optional[str], typer.Option(help="Flipped views of a --flip cache: auto (used when the teacher target of the flipped image exists too), random or none.", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    latent_stats: Annotated[Optional[Path], typer.Option(help="Normalise with these statistics instead of the cache's: a REPA-E *-latents-stats.pt or LightningDiT latents_stats.pt.", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    vae: Annotated[Optional[str], typer.Option(help="The VAE that wrote the cache, to decode sample grids (default: the one the cache records; another one is refused).", rich_help_panel=o.VAE_PANEL, show_default=False)] = None,
    vae_weights: o.VaeWeights = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for initialisation, data order, noise and flips.", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", "--max-train-steps", help="Optimizer steps (paper: 400000; overrides --epochs).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the cache instead of --steps.", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch (paper: 256), kept on any number of processes by gradient accumulation.", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    micro_batch: Annotated[Optional[int], typer.Option(help="Latents per forward pass and process (default: the preset value, paper 64, a per-device memory choice lowered until it divides the global batch over the processes).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", "--learning-rate", help="AdamW learning rate (paper: 1e-4, no weight decay).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    beta2: Annotated[Optional[float], typer.Option("--beta2", "--adam-beta2", help="AdamW's second-moment decay (paper and tiny: 0.999; lower follows a changing gradient sooner). beta1 is 0.9.", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", "--max-grad-norm", help="Gradient norm clip, 0 = off (paper: 1.0).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    ema: Annotated[Optional[float], typer.Option(help="EMA decay (paper: 0.9999; tiny: 0.999).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    time_schedule: Annotated[Optional[str], typer.Option("--time-schedule", "--weighting", help="Flow times: uniform (paper) or lognormal: log(t / (1 - t)) ~ N(--time-mean, 1).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    time_mean: Annotated[Optional[float], typer.Option("--time-mean", help="Centre of lognormal times: 0 = t of 0.5; above 0 spends more steps near the noise, where a sample's layout is decided (tiny: 0.5).", rich_help_panel=OPT_PANEL, show_default=False)] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.", rich_help_panel=o.RUN_PANEL)] = False,
    log_every: Annotated[Optional[int], typer.Option(help="Steps between metrics.jsonl rows.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", "--checkpointing-steps", help="Steps between checkpoints (each also refreshes OUT/export).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    sample_every: Annotated[Optional[int], typer.Option("--sample-every", "--sampling-steps", help="Steps between sample grids (OUT/samples/step-N.png).", rich_help_panel=PREVIEW_PANEL, show_default=False)] = None,
    preview_count: Annotated[Optional[int], typer.Option(help="Samples in a grid (fixed noise, labels cycling through the classes).", rich_help_panel=PREVIEW_PANEL, show_default=False)] = None,
    preview_steps: Annotated[Optional[int], typer.Option(help="Euler ODE steps per grid sample.", rich_help_panel=PREVIEW_PANEL, show_default=False)] = None,
    preview_cfg: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale of the grids (1 = none).", rich_help_panel=PREVIEW_PANEL, show_default=False)] = None,
    export_now: Annotated[bool, typer.Option("--export", help="Write OUT/export from the run's latest checkpoint and exit.", rich_help_panel=o.RUN_PANEL)] = False,
    workers: o.Workers = None,
    device: o.Device = "auto",
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 autocast + TF32 on CUDA, fp32 on CPU), fp32 or bf16.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    keep: o.Keep = None,
    tracker: o.Trackers = None,
    config: o.ConfigFile = None,
    quiet: o.Quiet = False,
) -> None:
    """Train a SiT flow-matching transformer (with REPA) on a latent cache (docs/train-sit.md)."""
    from sendvae_cli.train.sit_config import PRESETS, SiTTrainConfig

    if preset not in PRESETS:
        raise UserError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
    o.positive(("--steps", steps), ("--batch-size", batch_size), ("--micro-batch", micro_batch),
               ("--log-every", log_every), ("--checkpoint-every", checkpoint_every), ("--sample-every", sample_every),
               ("--lr", lr), ("--epochs", epochs), ("--encoder-depth", encoder_depth), ("--num-classes", num_classes),
               ("--preview-count", preview_count), ("--preview-steps", preview_steps), ("--keep", keep))
    from sendvae_cli.train.trackers import check_names

    trackers = check_names(tracker)
    for name, value in (("--proj-weight", proj_weight), ("--grad-clip", grad_clip)):
        if value is not None and value < 0:
            raise UserError(f"{name} {value}: expected 0 or more")
    for name, value in (("--cfg-prob", cfg_prob), ("--ema", ema), ("--beta2", beta2)):
        if value is not None and not 0 <= value < 1:
            raise UserError(f"{name} {value}: expected a number in [0, 1)")
    if time_schedule is not None and time_schedule not in ("uniform", "lognormal"):
        raise UserError(f"--time-schedule {time_schedule}: expected uniform or lognormal")
    if attention is not None and attention not in ("auto", "xformers", "sdpa"):
        raise UserError(f"--attention {attention}: expected auto, xformers or sdpa")
    if flip is not None and flip not in ("auto", "random", "none"):
        raise UserError(f"--flip {flip}: expected auto, random or none")
    o.check_precision(precision)
    o.exclusive_weights("--teacher-weights", teacher_weights, random_weights)
    o.existing(("LATENTS", latents), ("--teacher-weights", teacher_weights), ("--teacher-features", teacher_features),
               ("--latent-stats", latent_stats), ("--vae-weights", vae_weights), ("--root", root), ("--init", init))
    if root is not None and images is None:
        raise UserError(f"--root {root}: tells where the dataset of --images lives; give --images NAME too")
    run = dict(data=str(latents), random_weights=random_weights, device=device, quiet=quiet, compile=compile,
               workers=o.workers_or_default(workers), images=images, root=str(root) if root else None, init=init,
               teacher_weights=teacher_weights, teacher_features=teacher_features, latent_stats=latent_stats,
               vae=vae, vae_weights=vae_weights, tracker=trackers)
    flags = o.preset_flags(SiTTrainConfig, locals(), run, keep_checkpoints=keep)
    cfg = SiTTrainConfig.from_flags(preset, flags, **run)
    if time_mean is not None and cfg.time_schedule != "lognormal":
        raise UserError(f"--time-mean {time_mean}: centres lognormal times; this run's are {cfg.time_schedule} "
                        f"(add --time-schedule lognormal)")
    found = registry()
    found.generator(cfg.model)  # unknown names fail before anything heavy is imported
    if cfg.proj_weight > 0 and not teacher_features:
        found.teacher(cfg.teacher)
        if random_weights and is_main() and not quiet:
            from sendvae_cli.progress import warn

            warn("--random-weights: the REPA teacher is untrained; the run is a smoke test only")

    from sendvae_cli.train.sit_trainer import export_run, train_sit as run

    if export_now:
        export_run(cfg, found, out)
        return
    run(cfg, found, out)


# ---- sample ---------------------------------------------------------------------------------
SAMPLER_PANEL = "Sampler"
LABEL_PANEL = "Labels"


def _check_sampler(mode: str, steps: int, heun: bool, shift: float, cfg: float, low: float, high: float) -> None:
    """One-line errors for a sampler that cannot run as asked (after the presets filled the gaps)."""
    from sendvae_cli.generate.presets import MODES

    if shift != 1.0 and mode != "ode":
        raise UserError(f"--timestep-shift {shift}: shifts the ODE's time grid; the SDE sampler keeps REPA's grid")
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


def _check_output(labels_scheme: str, class_id: int | None, labels: str | None, precision: str,
                  grid: str | None) -> tuple[int, int] | None:
    """One-line errors for the labels, precision and grid asked for; the grid's (classes, samples)."""
    from sendvae_cli.generate.grid import parse_grid
    from sendvae_cli.generate.labels import SCHEMES
    from sendvae_cli.generate.presets import PRECISIONS

    if labels_scheme not in SCHEMES:
        raise UserError(f"--labels {labels_scheme}: expected {' or '.join(SCHEMES)}")
    if class_id is not None and labels is not None:
        raise UserError("--class and --labels exclude each other")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: expected {', '.join(PRECISIONS)}")
    if grid is None:
        return None
    try:
        return parse_grid(grid)
    except ValueError:
        raise UserError(f"--grid {grid}: expected KxM, e.g. 8x6 (K classes x M samples)") from None


@app.command()
@user_errors
def sample(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="A train-sit run folder, a generator export, a REPA/REPA-E SiT or LightningDiT .pt checkpoint, or one on the Hugging Face hub: hf:ORG/NAME (or hf:ORG/NAME/FILE).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Sample folder: PNGs, samples.npz, sample.json (rerun the same command to resume).", rich_help_panel=o.RUN_PANEL)] = Path("samples"),
    num: Annotated[Optional[int], typer.Option("-n", "--num-samples", help="Images to draw (default 50000).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    preset: Annotated[Optional[str], typer.Option(help="paper: 50k balanced samples, SDE 250 steps, CFG 2.5 on [0, 0.75]; lightningdit: hustvl's protocol, 50k random labels, ODE 249 steps shifted 0.3, CFG 6.7 on 3 channels for t <= 0.875. Explicit flags win.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale (on all channels unless --cfg-channels); 1 = none (default 1).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    mode: Annotated[Optional[str], typer.Option(help="ode (Euler / Heun) or sde (Euler-Maruyama, REPA's grid) (default ode).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps (default 50; the paper: SDE 250).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    heun: Annotated[bool, typer.Option("--heun", help="Heun's corrector for the ODE (2 x steps - 1 evaluations).", rich_help_panel=SAMPLER_PANEL)] = False,
    guidance_low: Annotated[Optional[float], typer.Option(help="Guide only steps starting at t >= this (t = 1 noise) (default 0).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    guidance_high: Annotated[Optional[float], typer.Option(help="Guide only steps starting at t <= this (default 1).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    cfg_interval_start: Annotated[Optional[float], typer.Option("--cfg-interval-start", help="LightningDiT's name for the interval: guide only where their time s = 1 - t is at least this (= --guidance-high 1 - S).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    cfg_channels: Annotated[Optional[int], typer.Option("--cfg-channels", help="Guide only the first K latent channels, the conditional velocity on the rest, as DiT/SiT/LightningDiT's code does (3 there) (default: all).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
    timestep_shift: Annotated[Optional[float], typer.Option("--timestep-shift", help="ODE time grid shift of LightningDiT: below 1 spends steps near the noise (their release: 0.3) (default 1, uniform).", rich_help_panel=SAMPLER_PANEL, show_default=False)] = None,
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
    from sendvae_cli.generate.presets import PRESETS

    if preset is not None and preset not in PRESETS:
        raise UserError(f"--preset {preset}: expected {' or '.join(PRESETS)}")
    paper = PRESETS[preset] if preset else {}

    def pick(value, key, default):
        return value if value is not None else paper.get(key, default)

    count, mode, steps = pick(num, "count", 50_000), pick(mode, "mode", "ode"), pick(steps, "steps", 50)
    if cfg_interval_start is not None:
        if guidance_high is not None:
            raise UserError("--cfg-interval-start and --guidance-high set the same bound; give one")
        if not 0 <= cfg_interval_start <= 1:
            raise UserError(f"--cfg-interval-start {cfg_interval_start}: expected a number in [0, 1]")
        guidance_high = 1.0 - cfg_interval_start
    cfg, low, high = pick(cfg, "cfg_scale", 1.0), pick(guidance_low, "guidance_low", 0.0), pick(guidance_high, "guidance_high", 1.0)
    labels_scheme = pick(labels, "labels", "balanced")
    channels, shift = pick(cfg_channels, "cfg_channels", None), pick(timestep_shift, "timestep_shift", 1.0)
    o.positive(("-n", count), ("--steps", steps), ("--batch-size", batch_size), ("--cfg-channels", channels),
               ("--timestep-shift", shift))
    _check_sampler(mode, steps, heun, shift, cfg, low, high)
    shape = _check_output(labels_scheme, class_id, labels, precision, grid)
    from sendvae_cli.generate.source import HUB_PREFIX, hub_generator

    if str(model).startswith(HUB_PREFIX):
        model = hub_generator(str(model))
    o.existing(("MODEL", model), ("--latent-stats", latent_stats))
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; expected a folder")

    from sendvae_cli.generate.pipeline import SampleSettings
    from sendvae_cli.generate.run import SampleRequest, run_sample

    settings = SampleSettings(count=count, mode=mode, steps=steps, heun=heun, cfg_scale=float(cfg),
                              guidance_low=float(low), guidance_high=float(high), labels=labels_scheme,
                              class_id=class_id, seed=seed, precision=precision, cfg_channels=channels,
                              timestep_shift=float(shift))
    found = registry()

    def build(name: str, arch: dict):
        if not found.has("generator", name):
            raise UserError(f"MODEL {model}: was trained with generator {name!r}, which no installed plugin registers; "
                            f"install the plugin that provides it (`sendvae plugins` lists what is installed)")
        return found.generator(name).build(**arch)

    run_sample(SampleRequest(model=model, out=out, settings=settings, batch_size=batch_size, vae=vae,
                             latent_stats=latent_stats, force_vae=force_vae, grid=shape, device=device,
                             compile=compile, quiet=quiet, build=build))
