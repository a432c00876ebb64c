"""Rich progress bars for long steps: count, throughput, ETA. Silent when quiet or not rank 0.

Where no terminal is (a batch job writing to a log file), a bar would show only its last state;
there the same calls print a plain line every `SENDVAE_PROGRESS_SECONDS` (default 30) and at the
end: description (with the key losses of a training run), done/total, rate, elapsed, ETA.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from sendvae_cli.ranks import is_main

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed and task.elapsed:
            # rich estimates speed from recent samples only; fall back to the run's average.
            speed = (task.completed - task.fields.get("initial", 0)) / task.elapsed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


class Bar:
    """What pipelines call: advance(n); and the same object when nothing is shown."""

    def __init__(self, progress: Progress | None, task_id=None):
        self._progress, self._task = progress, task_id

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def stop_early(self) -> None:
        """Mark the bar finished where it stands (a loop that ended before its maximum)."""
        if self._progress is not None:
            done = next(t.completed for t in self._progress.tasks if t.id == self._task)
            self._progress.update(self._task, total=done)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainBar(Bar):
    """Periodic plain lines instead of a live bar (what a log file can hold)."""

    def __init__(self, description: str, total: int, completed: int, unit: str):
        super().__init__(None)
        self.description, self.total, self.done, self.unit = description, total, completed, unit
        self.initial, self.t0 = completed, time.perf_counter()
        self.every = float(os.environ.get("SENDVAE_PROGRESS_SECONDS", "30"))
        self.last_line = self.t0

    def line(self) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "-"
        console.print(f"{self.description}  {self.done}/{self.total} {self.unit}  {rate:,.2f} {self.unit}/s  "
                      f"elapsed {_clock(elapsed)}  ETA {eta}", highlight=False, soft_wrap=True, markup=False)
        self.last_line = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.perf_counter() - self.last_line >= self.every and self.done < self.total:
            self.line()

    def stop_early(self) -> None:
        self.total = self.done

    def describe(self, text: str) -> None:
        self.description = text


@contextmanager
def progress_bar(description: str, total: int, completed: int = 0, unit: str = "img",
                 show: bool = True) -> Iterator[Bar]:
    if not show:
        yield Bar(None)
        return
    if not console.is_terminal:
        bar = PlainBar(description, total, completed, unit)
        yield bar
        bar.line()
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        yield Bar(progress, progress.add_task(description, total=total, completed=completed, initial=completed))


def info(message: str, show: bool = True) -> None:
    if show:
        console.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning line, from rank 0 only: under torchrun every process meets the same ones."""
    if is_main():
        console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)
