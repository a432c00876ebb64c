"""`--config FILE`: a training command's options from a TOML, YAML or JSON file.

Keys are the command's option names, with `_` or `-` (`lpips_weight = 0` or `lpips-weight: 0`),
at the top level or under a table named after the command (`[train-vae]`). A run's own `config.json` is accepted as it is: the entries
it records beside the options (`producer`, `resolved`, ...) are listed by the command and skipped.
Options given on the command line win over the file; a key the command does not know is an
error naming it (with the closest option name).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Iterable

from sendvae_cli.errors import UserError

SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def read_config_file(path: Path | str, option: str = "--config") -> dict[str, Any]:
    """The file's mapping, parsed by its suffix; one-line errors for a missing or malformed file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{option} {path}: expected a .toml, .yaml/.yml or .json file")
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        elif suffix == ".json":
            values = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise UserError(f"{option} {path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
            values = yaml.safe_load(text) or {}
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - tomllib / json / yaml each raise their own kind
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{option} {path}: cannot parse it ({first})") from None
    if not isinstance(values, dict):
        raise UserError(f"{option} {path}: expected a mapping of option names to values at the top level")
    return values


def option_values(values: dict[str, Any], command: str, known: Iterable[str], *, recorded: Iterable[str] = (),
                  path: Path | str = "", option: str = "--config") -> dict[str, Any]:
    """{parameter name: value} for `command` from a parsed file.

    known: the command's parameter names (python names, with `_`); recorded: keys a run writes
    into its config.json that are not options (skipped). Unknown keys raise a UserError naming the key.
    """
    known = set(known)
    recorded = set(recorded)
    section = values.get(command)
    flat = {k: v for k, v in values.items() if k != command}
    if isinstance(section, dict):
        flat.update(section)  # the command's own table wins over shared top-level keys
    chosen: dict[str, Any] = {}
    for key, value in flat.items():
        name = str(key).replace("-", "_")
        if name in known:
            chosen[name] = value
        elif name not in recorded:
            raise unknown_key(key, known, path, option, table=isinstance(value, dict))
    return chosen


def unknown_key(key: str, known: set[str], path, option: str, table: bool = False) -> UserError:
    close = difflib.get_close_matches(str(key).replace("-", "_"), sorted(known), n=1)
    hint = f" (did you mean {close[0].replace('_', '-')}?)" if close else ""
    what = "table" if table else "key"
    return UserError(f"{option} {path}: unknown {what} {key!r}{hint}; the command's options are its "
                     f"--help flags without the dashes")
