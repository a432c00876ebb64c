"""Rich progress bars for long steps: count, throughput, ETA. Silent when quiet or not rank 0."""

from __future__ import annotations

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


@contextmanager
def progress_bar(description: str, total: int, completed: int = 0, unit: str = "img",
                 show: bool = True) -> Iterator[Bar]:
    if not show:
        yield Bar(None)
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
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)
