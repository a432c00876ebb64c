"""Stopping cleanly on SIGTERM / SIGINT: what a cluster scheduler sends before it kills a job.

A long loop runs inside `stop_on_signals()`. The first SIGTERM or SIGINT (Ctrl-C) only sets a
flag: the loop finishes the unit in hand (a training step, a batch of rows), saves what a rerun
resumes from, and raises `Interrupted`, whose message is the one line that says where it stopped
and how to continue. A second signal abandons the unit at once (KeyboardInterrupt); what was
saved before stays valid. A second one within `REPEAT_S` of the first is the same request
passed on: a scheduler signals every process of a job, and torchrun forwards what it receives
itself, so each worker gets the one stop twice, milliseconds apart (Ctrl-C at a terminal too). Under torchrun every process gets the signal; `stop_agreed` makes
the processes of a training run stop after the same step.

Under torchrun (`distributed.init`), `stop_outside_loops` makes the signal raise `Interrupted` at
once wherever no loop polls for it (set-up, a final merge), instead of the signal's default death:
every process then ends with one readable line (`sendvae_cli.outcome`), exit code 128 + signal.

DataLoader workers ignore both signals (`ignore_stop_signals` as their `worker_init_fn`), so
they keep delivering the batch the unit in hand still needs; they exit with the main process.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from sendvae_cli.errors import UserError

SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_S = 2.0  # a second signal sooner than this after the first is the same stop, passed on


class Interrupted(UserError):
    """Stopped by a signal after saving; the message says where and how to continue."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.exit_code = 128 + int(signum)  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self.at = 0.0  # time.monotonic() of the signal

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn SIGTERM / SIGINT into a request the loop polls; a second one raises KeyboardInterrupt."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # handlers only install there
        yield request
        return

    def handle(signum, frame):
        if request.requested:
            if time.monotonic() - request.at < REPEAT_S:
                return
            raise KeyboardInterrupt
        request.signum, request.at = signum, time.monotonic()

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_agreed(request: StopRequest, dist) -> bool:
    """True on every process when any process was asked to stop (one tiny all-reduce per call)."""
    if dist is None or dist.world <= 1:
        return request.requested
    import torch
    import torch.distributed as torch_dist

    flag = torch.tensor([float(request.requested)], device=dist.device)
    torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
    if flag.item() > 0 and request.signum is None:
        request.signum, request.at = int(signal.SIGTERM), time.monotonic()
    return flag.item() > 0


def stop_outside_loops() -> None:
    """SIGTERM / SIGINT raise `Interrupted` (saying how to resume) where no loop polls for them."""
    if threading.current_thread() is not threading.main_thread():
        return

    last = [-REPEAT_S]

    def handle(signum, frame):
        from sendvae_cli.outcome import resume_note

        if time.monotonic() - last[0] < REPEAT_S:  # the same stop, passed on: already being handled
            return
        last[0] = time.monotonic()
        raise Interrupted(f"{signal.Signals(signum).name} received; {resume_note()}", signum)

    for s in SIGNALS:
        signal.signal(s, handle)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: the main process decides when to stop."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
