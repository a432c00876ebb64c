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
        if enabled and self.path.exists():
            # Drop lines past the checkpoint we resume from: those steps are about to be redone.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            with atomic_file(self.path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step}
        for key, value in values.items():
            value = float(value) if hasattr(value, "__float__") else value
            row[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        with write_errors(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
