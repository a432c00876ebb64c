"""The `sendvae` Typer app: the error wrapper, `--version`, and what every command body shares.

Each command parses and validates its options, then calls a pipeline. Heavy libraries (torch,
timm, open_clip, transformers) are imported inside the commands that need them, so `--help`
and `sendvae plugins` answer at once. A `UserError` anywhere becomes one red line and exit 2.
"""

from __future__ import annotations

import functools
import signal
import sys
from typing import Annotated

import typer

from sendvae_cli import __version__
from sendvae_cli.errors import UserError
from sendvae_cli.ranks import is_main

app = typer.Typer(
    name="sendvae",
    help="Send-VAE: VAEs aligned to vision foundation models, latent caches, SiT generators, FID and probes.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _print_error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)


def _say(verdict) -> None:
    """Print an `outcome.Verdict`'s line (if this process is the one to say it) and exit with its code."""
    if verdict.line is not None:
        if verdict.label == "stopped":
            from rich.console import Console

            Console(stderr=True).print(f"[bold yellow]stopped:[/bold yellow] {verdict.line}", highlight=False,
                                       soft_wrap=True)
        else:
            _print_error(verdict.line)
    raise typer.Exit(verdict.exit_code)


def user_errors(command):
    """Report UserError, and any write error a user can fix (full disk, read-only, permission:
    `sendvae_cli.io.write_error_message`), as one line (exit code 2) instead of a traceback; a run
    stopped by SIGTERM or SIGINT (`Interrupted`) prints where it stopped and exits 128 + the signal number.

    Under torchrun the processes agree on one line for the job (`sendvae_cli.outcome`): an error or
    a stop is said once (by rank 0, or by the rank that met it alone, named), and when a process
    dies the survivors' failed collective calls become one line naming it and how to resume.
    Python warnings are shown by rank 0 only: every rank runs the same code. A command that
    succeeds waits for the job's other processes before it returns (`distributed.finish`)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from sendvae_cli import outcome

        if outcome.rank() != 0:
            import warnings

            warnings.simplefilter("ignore")
        try:
            result = command(*args, **kwargs)
            if "torch.distributed" in sys.modules:  # a command that never imported torch has no group
                from sendvae_cli.distributed import finish

                finish()  # under torchrun: every process ends together
            return result
        except UserError as error:
            from sendvae_cli.stopping import Interrupted

            lost = outcome.lost_peer(error)
            if lost is not None:  # a signal or an error that came of a process gone
                _say(outcome.settle("lost", outcome.first_line(lost), 1))
            if isinstance(error, Interrupted):  # stopped on request, after saving: not an error
                _say(outcome.settle("stopped", str(error), error.exit_code))
            _say(outcome.settle("error", str(error), 2))
        except typer.Exit:
            raise
        except KeyboardInterrupt:  # a second stop signal: the unit in hand was abandoned
            if outcome.world() <= 1:
                raise
            _say(outcome.settle("stopped", f"interrupted again, the work in hand abandoned; {outcome.resume_note()}",
                                128 + int(signal.SIGINT)))
        except Exception as error:  # noqa: BLE001 - a write error a user can fix is one line too
            from sendvae_cli.io import write_error_message

            lost = outcome.lost_peer(error)
            if lost is not None:
                _say(outcome.settle("lost", outcome.first_line(lost), 1))
            message = write_error_message(error)
            if message is None:
                outcome.settle("crashed", outcome.first_line(error), 1)  # this process shows the traceback
                raise
            _say(outcome.settle("error", message, 2))

    return wrapper


def registry():
    """The plugin registry; each plugin problem is reported once per process."""
    from sendvae_cli.progress import warn
    from sendvae_cli.registry import get_registry

    found = get_registry()
    if found.problems and not getattr(found, "_reported", False):
        for problem in found.problems:
            warn(problem)
        found._reported = True
    return found


def open_data(data, registry, *, resolution, num_images, seed, strict, root):
    """DATA as an image source; skipped unreadable images are reported once (rank 0)."""
    from sendvae_cli.data.open import open_images
    from sendvae_cli.progress import warn

    source = open_images(data, registry=registry, resolution=resolution, num_images=num_images, seed=seed,
                         strict=strict, root=str(root) if root else None)
    skipped = getattr(source, "skipped_summary", lambda: None)()
    if skipped and is_main():
        warn(skipped)
    return source


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


def main() -> None:
    app(prog_name="sendvae")
