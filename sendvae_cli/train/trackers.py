"""Experiment trackers: the run's scalars, image grids and configuration, sent to TensorBoard or wandb.

`metrics.jsonl` in the run folder is the record that always exists; a tracker receives the same
scalars as they are written, each grid the run saves (as an image, at its step) and the resolved
configuration once. Both are optional extras (`pip install 'sendvae[tensorboard]'` or
`'sendvae[wandb]'`); asking for one that is not installed is a one-line error before training.

- tensorboard: event files in `RUN/tensorboard/` (`tensorboard --logdir RUN/tensorboard`); the
  configuration is a text entry `config`.
- wandb: the run is named after the run folder, in project `$WANDB_PROJECT` (default `sendvae`),
  its files under `RUN/wandb/`, with a run id derived from the run folder's path so a resumed
  run continues the same wandb run. wandb's own settings apply as usual: `WANDB_MODE=offline`
  writes the run locally for a later `wandb sync`, `WANDB_MODE=disabled` turns it off.

Only the main process (rank 0) opens trackers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sendvae_cli.errors import UserError

TRACKERS = ("tensorboard", "wandb")


class Tracker:
    """Receives what a run records; the base class drops everything (no tracker asked for)."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        pass

    def log_image(self, tag: str, image: np.ndarray, step: int, caption: str = "") -> None:
        """`image`: (H, W, 3) uint8."""

    def close(self) -> None:
        pass


def numeric(scalars: Mapping[str, Any]) -> dict[str, float]:
    """The entries a tracker can plot: numbers (not bools, not the step itself)."""
    return {k: float(v) for k, v in scalars.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tracker tensorboard: the tensorboard package is not installed; "
                            "pip install 'sendvae[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_config(self, config):
        text = json.dumps(dict(config), indent=2, sort_keys=True, default=str)
        self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def log_scalars(self, step, scalars):
        for name, value in numeric(scalars).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_image(self, tag, image, step, caption=""):
        self.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
        self.writer.flush()

    def close(self):
        self.writer.close()


def wandb_run_id(run_dir: Path) -> str:
    return "sendvae-" + hashlib.sha256(str(run_dir.resolve()).encode("utf-8")).hexdigest()[:16]


class WandbTracker(Tracker):
    def __init__(self, run_dir: Path, config: Mapping[str, Any]):
        try:
            import wandb
        except ImportError:
            raise UserError("--tracker wandb: the wandb package is not installed; pip install 'sendvae[wandb]'") from None
        self.wandb = wandb
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sendvae"), name=run_dir.name,
                                  id=wandb_run_id(run_dir), resume="allow", dir=str(run_dir),
                                  config=json.loads(json.dumps(dict(config), default=str)))
        except Exception as error:  # noqa: BLE001 - wandb raises many kinds; the user needs one line
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"--tracker wandb: cannot start a wandb run ({first}); log in with `wandb login`, "
                            f"or set WANDB_MODE=offline to record it locally") from None

    def log_scalars(self, step, scalars):
        self.run.log(numeric(scalars), step=step)

    def log_image(self, tag, image, step, caption=""):
        self.run.log({tag: self.wandb.Image(np.asarray(image), caption=caption or None)}, step=step)

    def close(self):
        self.run.finish()


class Trackers(Tracker):
    """Several trackers as one."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log_config(self, config):
        for t in self.trackers:
            t.log_config(config)

    def log_scalars(self, step, scalars):
        for t in self.trackers:
            t.log_scalars(step, scalars)

    def log_image(self, tag, image, step, caption=""):
        for t in self.trackers:
            t.log_image(tag, image, step, caption)

    def close(self):
        for t in self.trackers:
            t.close()


def check_names(names: list[str] | tuple[str, ...] | None) -> list[str]:
    """The tracker names, validated (one-line error for an unknown one), duplicates dropped."""
    chosen: list[str] = []
    for name in names or []:
        for part in str(name).split(","):
            part = part.strip().lower()
            if not part or part == "none":
                continue
            if part not in TRACKERS:
                raise UserError(f"--tracker {part}: unknown tracker; expected one of {', '.join(TRACKERS)}")
            if part not in chosen:
                chosen.append(part)
    return chosen


def open_trackers(names, run_dir: Path, config: Mapping[str, Any]) -> Tracker:
    """The trackers asked for, started, with the configuration already logged."""
    opened: list[Tracker] = []
    for name in check_names(names):
        opened.append(TensorBoardTracker(run_dir) if name == "tensorboard" else WandbTracker(run_dir, config))
    tracker = Trackers(opened) if opened else Tracker()
    tracker.log_config(config)
    return tracker
