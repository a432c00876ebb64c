"""Writing files: so that a reader never sees half of one (a temporary name, then a rename),
and with the permissions a normally written file gets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping


def write_json_atomic(path: Path, value: Any, default: Callable[[Any], Any] = str) -> None:
    """Write JSON to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=default))
    os.replace(tmp, path)


def umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors(tensors: Mapping[str, Any], path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """safetensors' save_file, with the permissions of a normally written file.

    save_file creates its file readable by its owner only (0600); a collaborator sharing the run
    folder or an export must be able to read it, so the mode is set as `open()` would (0644 under
    umask 022).
    """
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata is not None else None)
    os.chmod(path, 0o666 & ~umask())
