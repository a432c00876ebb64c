"""The `sendvae` command line: the Typer app (`app.py`), the options several commands share
(`options.py`), and one module per group of commands.

Importing this package registers every command, in the order `sendvae --help` lists them.
"""

from sendvae_cli.cli.app import app, main
from sendvae_cli.cli import plugins, caches, vae, generate, eval  # noqa: F401, E402 - each registers its commands

__all__ = ["app", "main"]
