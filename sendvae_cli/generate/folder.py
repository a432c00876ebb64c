"""The sample folder on disk and its resume rules.

    OUT/sample.json                the manifest: settings (what decides the images), status; the same
                                   bytes for the same command, however often it was resumed
    OUT/runs.jsonl                 one line per finishing run: its time, device, batch and world size
    OUT/images/000000/000123.png   one PNG per sample, 1000 per shard folder, named by sample index
    OUT/samples.npz                ADM batch: arr_0 uint8 N x H x W x 3, arr_1 labels (when conditional)
    OUT/grid.png                   with --grid

A PNG is written to a temporary name and renamed, so an existing PNG is a finished sample: a rerun
(after kill -9 or on more processes) only draws the missing ones. A manifest with other settings is
refused, so one folder never mixes two protocols. `finish` runs once, after every PNG exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from sendvae_cli.errors import UserError
from sendvae_cli.io import remove_stale_temporaries, write_errors, write_json_atomic

FORMAT = "sendvae-samples"
FORMAT_VERSION = 1
MANIFEST = "sample.json"
RUNS = "runs.jsonl"
IMAGES = "images"
NPZ = "samples.npz"
GRID = "grid.png"
SHARD = 1000  # PNGs per folder: directory listings stay fast at 50k samples


def _sorted(value: Any) -> Any:
    """Dicts with sorted keys at every level: the manifest's bytes do not depend on insertion order."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


class SampleFolder:
    def __init__(self, out: Path, count: int):
        self.out = Path(out)
        self.count = count
        self.digits = max(6, len(str(max(count - 1, 0))))  # fixed width: sorted names are sample order
        self.manifest = self.out / MANIFEST
        self.runs = self.out / RUNS
        self.images = self.out / IMAGES
        self.npz = self.out / NPZ

    # ---- paths -------------------------------------------------------------------------
    def png(self, index: int) -> Path:
        shard = index - index % SHARD
        return self.images / f"{shard:0{self.digits}d}" / f"{index:0{self.digits}d}.png"

    def missing(self, indices: Iterable[int]) -> list[int]:
        return [i for i in indices if not self.png(i).is_file()]

    # ---- manifest ----------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest.is_file():
            return None
        try:
            manifest = json.loads(self.manifest.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"--out {self.out}: {MANIFEST} is unreadable ({type(error).__name__}); "
                            f"choose another --out") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UserError(f"--out {self.out}: {MANIFEST} is not a sendvae sample manifest; choose another --out")
        return manifest

    def check(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The existing manifest when OUT continues a run with these settings; UserError otherwise."""
        manifest = self.read_manifest()
        if manifest is None:
            if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
                raise UserError(f"--out {self.out}: exists and is not a sample folder (no {MANIFEST}); "
                                f"choose another --out")
            return None
        old = manifest.get("settings", {})
        if old != settings:
            keys = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            shown = ", ".join(f"{k} {old.get(k)!r} (now {settings.get(k)!r})" for k in keys[:3])
            raise UserError(f"--out {self.out}: written with other settings ({shown}); "
                            f"rerun with those settings to resume, or choose another --out")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.manifest, _sorted(manifest))

    def append_run(self, record: dict[str, Any]) -> None:
        """Log a run's timing apart from the manifest, which stays a function of the settings."""
        with write_errors(self.runs, kept="the samples are kept"), open(self.runs, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read_runs(self) -> list[dict[str, Any]]:
        if not self.runs.is_file():
            return []
        runs = []
        for line in self.runs.read_text().splitlines():
            try:
                runs.append(json.loads(line))
            except ValueError:  # a line torn by a kill: the log is informative only
                continue
        return runs

    # ---- images ------------------------------------------------------------------------
    def write_png(self, index: int, image: np.ndarray) -> None:
        path = self.png(index)
        with write_errors(path, kept="the samples already written are kept"):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + ".tmp.png")  # no fsync per image: a torn one is redrawn (tidy)
            Image.fromarray(image).save(tmp, format="PNG")
            os.replace(tmp, path)

    def read_png(self, index: int) -> np.ndarray:
        with Image.open(self.png(index)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def read_all(self, pool, chunk: int = 256) -> Iterator[np.ndarray]:
        """Every PNG in index order, decoded `chunk` at a time on the pool."""
        for start in range(0, self.count, chunk):
            yield from pool.map(self.read_png, range(start, min(start + chunk, self.count)))

    def tidy(self) -> None:
        """Remove half-written PNGs and .npz left by a killed run."""
        remove_stale_temporaries(self.npz.parent, self.npz.name)
        if self.images.is_dir():
            for tmp in self.images.glob("*/*.tmp.png"):
                tmp.unlink(missing_ok=True)
