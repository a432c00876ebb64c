"""Writing files so that a reader never sees half of one: write a temporary name, then rename."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def write_json_atomic(path: Path, value: Any, default: Callable[[Any], Any] = str) -> None:
    """Write JSON to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=default))
    os.replace(tmp, path)
