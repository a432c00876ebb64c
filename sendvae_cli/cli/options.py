"""Options that several commands share, each declared once as an `Annotated` alias, and the
checks that go with them.

A command writes `seed: options.Seed = 0`; the default stays in the command (it differs
between commands), the flag, help text and panel live here. An option whose help must say
something particular to one command is declared in that command.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

import typer

from sendvae_cli.errors import UserError
from sendvae_cli.ranks import is_main

DATA_PANEL = "Data"
TEACHER_PANEL = "Teacher"
VAE_PANEL = "VAE"
RUN_PANEL = "Run"
EXTRACTOR_PANEL = "Extractor"

# ---- data ----------------------------------------------------------------------------------
Data = Annotated[str, typer.Argument(metavar="DATA", help="A folder of images (class sub-folders give labels) or a dataset name, e.g. shapes.", show_default=False)]
OptionalData = Annotated[Optional[str], typer.Argument(metavar="DATA", help="A folder of images (class sub-folders give labels) or a dataset name, e.g. shapes.", show_default=False)]
Resolution = Annotated[int, typer.Option(help="Image side in pixels after ADM centre crop (multiple of 16).", rich_help_panel=DATA_PANEL)]
NumImages = Annotated[Optional[int], typer.Option(help="Use only the first N images (for a named dataset: its size).", rich_help_panel=DATA_PANEL, show_default=False)]
Seed = Annotated[int, typer.Option(help="Seed for generated datasets and --random-weights.", rich_help_panel=DATA_PANEL)]
Root = Annotated[Optional[Path], typer.Option(help="Where a named on-disk dataset lives.", rich_help_panel=DATA_PANEL, show_default=False)]
Strict = Annotated[bool, typer.Option(help="Fail on an unreadable image instead of skipping it.", rich_help_panel=DATA_PANEL)]

# ---- weights -------------------------------------------------------------------------------
TeacherWeights = Annotated[Optional[Path], typer.Option(help="Local weights file or folder for the teacher.", rich_help_panel=TEACHER_PANEL, show_default=False)]
VaeWeights = Annotated[Optional[Path], typer.Option(help="Local weights for the VAE base.", rich_help_panel=VAE_PANEL, show_default=False)]

# ---- feature extractors (fid, recon: the space of the Fréchet distance, docs/fid.md) ------------
Extractor = Annotated[str, typer.Option(help="inception (FID, the ADM protocol) or a teacher name: dinov2-l gives FD_DINOv2, tv-mobilenet-v2 works offline.", rich_help_panel=EXTRACTOR_PANEL)]
InceptionWeights = Annotated[Optional[Path], typer.Option(help="Local weights-inception-2015-12-05-6726825d.pth (the torch-fidelity release file), or a folder holding it.", rich_help_panel=EXTRACTOR_PANEL, show_default=False)]
ExtractorWeights = Annotated[Optional[Path], typer.Option("--teacher-weights", help="Local weights file or folder for a teacher --extractor.", rich_help_panel=EXTRACTOR_PANEL, show_default=False)]

# ---- run -----------------------------------------------------------------------------------
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUN_PANEL)]
Workers = Annotated[Optional[int], typer.Option(help="DataLoader worker processes decoding images (default: CPU cores, at most 8).", rich_help_panel=RUN_PANEL, show_default=False)]
BatchSize = Annotated[Optional[int], typer.Option(help="Images per forward pass and process (default: 64 on GPU, 16 on CPU).", rich_help_panel=RUN_PANEL, show_default=False)]
BlockRows = Annotated[int, typer.Option(help="Rows per resumable block: the unit of work of one process.", rich_help_panel=RUN_PANEL)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=RUN_PANEL)]

PRECISIONS = ("auto", "fp32", "bf16")


# ---- checks --------------------------------------------------------------------------------
def positive(*named: tuple[str, int | float | None]) -> None:
    """Each (flag, value) given must be above zero."""
    for name, value in named:
        if value is not None and not value > 0:
            raise UserError(f"{name} {value}: expected a positive number")


def preset_flags(config_class, values: Mapping[str, Any], run: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """The flags that override a training preset: {field: value}, None where the flag was not given.

    Every field of the config dataclass that the command has a value of, by the same name in
    `values` (the command's `locals()`) or in `given` (a flag under another name, or a parsed
    value), except the run settings passed beside them (`run`) and `preset` itself. So a new
    preset field needs only its option in the command's signature.
    """
    values = {**values, **given}
    return {f.name: values[f.name] for f in dataclasses.fields(config_class)
            if f.name in values and f.name not in run and f.name != "preset"}


def workers_or_default(workers: int | None) -> int:
    """--workers, defaulting to the CPU cores (at most 8)."""
    if workers is None:
        workers = max(0, min(8, (os.cpu_count() or 1)))
    if workers < 0:
        raise UserError(f"--workers {workers}: expected 0 or more")
    return workers


def check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: expected auto, fp32 or bf16")


def exclusive_weights(flag: str, weights: Path | None, random_weights: bool) -> None:
    if weights is not None and random_weights:
        raise UserError(f"{flag} and --random-weights exclude each other")


def existing(*named: tuple[str, Path | None]) -> None:
    """Each (flag, path) given must exist."""
    for name, path in named:
        if path is not None and not path.expanduser().exists():
            raise UserError(f"{name} {path}: no such file or folder")


# ---- training runs (every trainer built on train/loop.py) -------------------------------------
Keep = Annotated[Optional[int], typer.Option("--keep", help="Checkpoints kept: the newest N (default 2); older ones are deleted as new ones are saved.", rich_help_panel=RUN_PANEL, show_default=False)]
Trackers = Annotated[Optional[list[str]], typer.Option("--tracker", help="Also log to tensorboard or wandb (repeat for both; optional extras). metrics.jsonl is always written.", rich_help_panel=RUN_PANEL, show_default=False)]


# ---- --config FILE ---------------------------------------------------------------------------
# config.json fields recorded under another name than the flag that sets them: {command: {field: (param, convert)}}.
CONFIG_ALIASES = {"train-vae": {"noise": ("no_noise", lambda on: not on), "keep_checkpoints": ("keep", int)},
                  "train-sit": {"keep_checkpoints": ("keep", int)}}


def _apply_config_file(ctx: typer.Context, param, value: Optional[Path]):
    """Eager callback of --config: the file's values become the command's defaults, so every flag
    given on the command line still wins. A sendvae run's own config.json also records facts that
    are not options (step counts, data hashes, ...): those are skipped; any other unknown key in a
    file is an error naming it."""
    if value is None:
        return value
    from sendvae_cli.train.config_file import option_values, read_config_file

    try:
        values = read_config_file(value)
        params = {p.name for p in ctx.command.params if p.name and p.name != "config"}
        written_by_us = str(values.get("producer", "")).startswith("sendvae")
        for key, (name, convert) in CONFIG_ALIASES.get(ctx.command.name or "", {}).items():
            if key in values and name in params:
                values[name] = convert(values.pop(key))
        recorded = set(values) - params if written_by_us else ()
        chosen = option_values(values, ctx.command.name or "", params, recorded=recorded, path=value)
    except UserError as error:
        from sendvae_cli.cli.app import _print_error

        if is_main():  # every process of a torchrun job reads the same file
            _print_error(str(error))
        raise typer.Exit(2) from None
    ctx.default_map = {**(ctx.default_map or {}), **chosen}
    return value


ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", is_eager=True, callback=_apply_config_file, rich_help_panel=RUN_PANEL, show_default=False,
    help="Options from a TOML, YAML or JSON file (keys are option names; a run's config.json works too). "
         "Flags given on the command line win.")]


def resolution_from_vae(vae: str, resolution: int | None, quiet: bool = False) -> int | None:
    """--resolution, else the one an exported VAE (or train-vae run) was trained at (said on
    screen), else None when it records none."""
    if resolution is not None:
        return resolution
    from sendvae_cli.vae.open import recorded_resolution

    recorded = recorded_resolution(vae)
    if recorded and is_main() and not quiet:
        from sendvae_cli.progress import info

        info(f"--resolution {recorded}: the resolution {vae} was trained at (its vae.json); pass --resolution to change it")
    return recorded
