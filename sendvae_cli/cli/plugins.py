"""`sendvae plugins`: what the installed plugins register (fast: no heavy library is imported)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sendvae_cli.cli.app import app, registry, user_errors


@app.command()
@user_errors
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
) -> None:
    """List installed plugins and what they register: teachers, VAE bases, generators, datasets."""
    found = registry()
    if as_json:
        typer.echo(json.dumps(plugins_as_dict(found), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Plugins", title_justify="left")
    for column in ("plugin", "version", "origin", "registers"):
        table.add_column(column)
    for info in found.plugins.values():
        what = ", ".join(f"{len(v)} {k.replace('_', ' ')}(s)" for k, v in info.registered.items())
        table.add_row(info.name, info.version, info.origin, f"[red]failed: {info.error}[/red]" if info.error else what or "-")
    console.print(table)

    teachers = Table(title="Teachers", title_justify="left")
    for column in ("name", "family", "width", "patch", "weights source", "licence", "plugin"):
        teachers.add_column(column)
    for name, entry in found.components["teacher"].items():
        s = entry.spec
        teachers.add_row(name, s.family, str(s.width), str(s.patch_size), s.source, s.licence, entry.plugin)
    console.print(teachers)

    for kind, title in (("vae_base", "VAE bases"), ("generator", "Generators"), ("dataset", "Datasets")):
        table = Table(title=title, title_justify="left")
        for column in ("name", "description", "plugin"):
            table.add_column(column)
        for name, entry in found.components[kind].items():
            table.add_row(name, entry.spec.description, entry.plugin)
        if not found.components[kind]:
            table.add_row("-", "none installed", "-")
        console.print(table)


def plugins_as_dict(found) -> dict:
    out = {"plugins": [], "teachers": [], "vae_bases": [], "generators": [], "datasets": []}
    for info in found.plugins.values():
        out["plugins"].append({"name": info.name, "version": info.version, "origin": info.origin,
                               "error": info.error, "registers": info.registered})
    for kind, key in (("teacher", "teachers"), ("vae_base", "vae_bases"), ("generator", "generators"),
                      ("dataset", "datasets")):
        for name, entry in found.components[kind].items():
            row = {"name": name, "plugin": entry.plugin, "description": getattr(entry.spec, "description", "")}
            if kind == "teacher":
                s = entry.spec
                row.update(family=s.family, width=s.width, patch_size=s.patch_size, source=s.source, licence=s.licence)
            out[key].append(row)
    return out
