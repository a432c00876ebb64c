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
    """List installed plugins and what they register: teachers, VAE bases, generators, datasets, metrics."""
    found = registry()
    if as_json:
        typer.echo(json.dumps(plugins_as_dict(found), indent=2))
        return
    from rich.console import Console

    console = Console()
    for table in plugin_tables(found, console.width):
        console.print(table)


WIDE = 120  # from this terminal width on, the teachers table also shows weight sources and plugins


def plugin_tables(found, width: int) -> list:
    """The tables `sendvae plugins` prints. Names a user types never wrap or shorten; at widths
    under WIDE the teachers table leaves out its source and plugin columns (`--json` has them)."""
    from rich.table import Table

    from sendvae_cli.weights import local_weights

    def name_column(table: Table, names) -> None:
        table.add_column("name", no_wrap=True, min_width=max((len(n) for n in names), default=4))

    tables = []
    table = Table(title="Plugins", title_justify="left")
    name_column(table, [info.name for info in found.plugins.values()])
    for column in ("version", "origin", "registers"):
        table.add_column(column, overflow="fold")
    for info in found.plugins.values():
        what = ", ".join(f"{len(v)} {k.replace('_', ' ')}(s)" for k, v in info.registered.items())
        table.add_row(info.name, info.version, info.origin, f"[red]failed: {info.error}[/red]" if info.error else what or "-")
    tables.append(table)

    wide = width >= WIDE
    teachers = Table(title="Teachers (local: pretrained weights found in this machine's caches)", title_justify="left")
    name_column(teachers, found.components["teacher"])
    columns = ["family", "width", "patch", "local", "licence"] + (["weights source", "plugin"] if wide else [])
    for column in columns:
        teachers.add_column(column, overflow="fold", justify="right" if column in ("width", "patch") else "left")
    for name, entry in found.components["teacher"].items():
        s = entry.spec
        row = [name, s.family, str(s.width), str(s.patch_size), local_weights(s), s.licence]
        teachers.add_row(*row + ([s.source, entry.plugin] if wide else []))
    tables.append(teachers)

    for kind, title in (("vae_base", "VAE bases"), ("generator", "Generators"), ("dataset", "Datasets"),
                        ("metric", "Metrics (sendvae fid adds them to its own)")):
        table = Table(title=title, title_justify="left")
        name_column(table, found.components[kind])
        if kind == "vae_base":
            table.add_column("local", no_wrap=True)
        table.add_column("description", overflow="fold", ratio=1)
        table.add_column("plugin", overflow="fold")
        for name, entry in found.components[kind].items():
            local = [local_weights(entry.spec)] if kind == "vae_base" else []
            table.add_row(name, *local, entry.spec.description, entry.plugin)
        if not found.components[kind]:
            table.add_row("-", *(["-"] if kind == "vae_base" else []), "none installed", "-")
        tables.append(table)
    return tables


def plugins_as_dict(found) -> dict:
    from sendvae_cli.weights import local_weights

    out = {"plugins": [], "teachers": [], "vae_bases": [], "generators": [], "datasets": [], "metrics": []}
    for info in found.plugins.values():
        out["plugins"].append({"name": info.name, "version": info.version, "origin": info.origin,
                               "error": info.error, "registers": info.registered})
    for kind, key in (("teacher", "teachers"), ("vae_base", "vae_bases"), ("generator", "generators"),
                      ("dataset", "datasets"), ("metric", "metrics")):
        for name, entry in found.components[kind].items():
            row = {"name": name, "plugin": entry.plugin, "description": getattr(entry.spec, "description", "")}
            if kind in ("teacher", "vae_base"):
                row["local_weights"] = local_weights(entry.spec)
            if kind == "generator":
                row.update(family=entry.spec.family, arch=dict(entry.spec.arch))
            if kind == "teacher":
                s = entry.spec
                row.update(family=s.family, width=s.width, patch_size=s.patch_size, source=s.source, licence=s.licence)
            out[key].append(row)
    return out
