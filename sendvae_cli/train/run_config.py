"""Run folders own their configuration: presets, explicit flags, and refusing to mix runs.

The resolved configuration is written to OUT/config.json when a run starts. Rerunning the same
command resumes; rerunning with options that change the result is refused with a one-line
message naming what differs, unless no checkpoint was saved yet (a start that failed before
its first step): then the new configuration replaces the old one. Options listed as `RUN_ONLY` (workers, logging, ...) may change
between resumes, and so may the length of training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from sendvae_cli.errors import UserError
from sendvae_cli.io import remove_stale_temporaries, write_errors, write_json_atomic
from sendvae_cli.train.checkpoint import LATEST


def resolve(preset: Mapping[str, Any], explicit: Mapping[str, Any]) -> dict[str, Any]:
    """Preset values, overridden by every flag the user gave (None = not given)."""
    out = dict(preset)
    out.update({k: v for k, v in explicit.items() if v is not None})
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str]) -> list[str]:
    ignore = set(ignore)
    keys = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys]


def recorded_value(out: Path, key: str) -> Any:
    """`key` of OUT/config.json when OUT holds a run to resume (a saved step), else None."""
    out = Path(out)
    if not (out / "checkpoints" / LATEST).exists():
        return None
    try:
        recorded = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None  # prepare_run_dir says what is wrong with it
    return recorded.get(key) if isinstance(recorded, dict) else None


def prepare_run_dir(out: Path, config: Mapping[str, Any], *, ignore: Iterable[str], is_main: bool,
                    added: Mapping[str, Any] | None = None) -> bool:
    """Create OUT/config.json, or check it matches; True when resuming an existing run.

    `added` names fields that configurations gained after runs were recorded, with the value
    that reproduces such a run: a config.json without the field reads as having that value.
    """
    out = Path(out)
    path = out / "config.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON ({error}); fix or delete it") from None
        old = {**(added or {}), **old} if isinstance(old, dict) else old
        diff = differences(old, json.loads(json.dumps(config, default=str)), ignore)
        if diff and not (out / "checkpoints" / LATEST).exists():
            # A start that failed before its first checkpoint (missing weights, a wrong option)
            # leaves nothing to resume: the corrected command takes the folder over.
            if is_main:
                from sendvae_cli.progress import info

                info(f"--out {out}: no step was saved under its earlier configuration ({'; '.join(diff[:3])}); "
                     f"starting afresh with this one")
                _write_json(path, config)
            return False
        if diff:
            raise UserError(f"--out {out}: holds a run with another configuration ({'; '.join(diff[:3])}); "
                            f"rerun with the same options to resume it, or choose another --out")
        if is_main:  # run-only options may have changed: record the latest ones
            _write_json(path, config)
            remove_stale_temporaries(out)  # files and folders a killed run was writing
        return True
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: folder is not empty and holds no config.json; choose another --out")
    if is_main:
        with write_errors(out):
            out.mkdir(parents=True, exist_ok=True)
        _write_json(path, config)
    return False


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_json_atomic(path, data, sort_keys=True)
