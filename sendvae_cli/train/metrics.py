"""metrics.jsonl: one JSON object per logged step, consistent across resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from sendvae_cli.io import atomic_file, write_errors


class MetricsLog:
    def __init__(self, path: Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []  # what the file holds (rank 0): kept rows, then those written
        if enabled and self.path.exists():
            # Drop lines past the checkpoint we resume from: those steps are about to be redone. A
            # line a kill cut short (the last one) is dropped too: its step is redone.
            self.rows = [row for row in map(_parse, self.path.read_text().splitlines())
                         if row is not None and row.get("step", 0) <= resume_step]
            with atomic_file(self.path) as tmp:
                tmp.write_text("".join(json.dumps(row) + "\n" for row in self.rows))

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step}
        for key, value in values.items():
            value = float(value) if hasattr(value, "__float__") else value
            row[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        with write_errors(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")  # one write call: a row is in the file whole or cut short
        self.rows.append(row)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line) if line.strip() else None
    except ValueError:
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
