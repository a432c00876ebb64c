"""One outcome per job: which process of a torchrun job says what when a command fails or stops.

Every process of a torchrun job runs the same command, so an error one meets the others mostly
meet too, and a scheduler's SIGTERM reaches all of them: printed as they come, a user would read
each line once per process. When a worker dies, the others' collective calls fail with pages of
backend traceback. Instead each process posts its outcome to the launcher's key-value store (the
TCPStore of the rendezvous, which outlives the workers) and one line is printed for the job:

    error     rank 0 prints its own at once. Another rank prints its own, named ("rank 3 of 8:
              ..."), unless a lower rank posts an error within ERROR_WAIT_S (then it was the same).
    stopped   the same, waiting up to STOP_WAIT_S (every rank got the signal; the lower ones may
              still be finishing the batch in hand).
    lost      a collective call failed: a process is gone. Once every rank posted or is known to
              have ended, or after LOST_WAIT_S, the lowest rank that posted 'lost' prints one line
              naming the ranks that said nothing (killed, out of memory, a crash) and how to resume.
              A rank that posted an error, a stop or a crash has spoken for itself already.
    crashed   an unexpected exception: its rank prints the traceback; the others stay silent.

The rank that prints the job's line marks that it did, and no rank prints one after it: a worker
stopped on its own says so, and the stop the launcher then sends the others adds nothing.

Processes on one machine also post their pid when the process group starts, so a survivor tells
a process that has ended from one that is merely slow to post. Without a store (one process, or
a launch whose store lived in a rank that died) every process prints its own line, named.

The resume note ("rerun the same command to resume from step N") is what a pipeline last said
about where a rerun picks up (`set_resume`); it ends the line of a lost worker and of a stop.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from sendvae_cli.ranks import launch

ERROR_WAIT_S = 3.0
STOP_WAIT_S = 10.0
LOST_WAIT_S = 8.0  # under the launcher's 30 s between its SIGTERM to the survivors and SIGKILL
DEFAULT_RESUME = "rerun the same command to continue"

_resume: str | Callable[[], str] = DEFAULT_RESUME
_store = None  # None: not tried yet; False: none reachable


@dataclass(frozen=True)
class Verdict:
    """What this process does about the job's outcome: print `line` (unless None) under `label`
    ('error' or 'stopped'), then exit with `exit_code`."""

    line: str | None
    label: str
    exit_code: int


def set_resume(note: str | Callable[[], str]) -> None:
    """Where a rerun picks up, as the end of a sentence ("rerun the same command to resume from step 40"),
    or a function that reads it from disk when the line is printed (what a rerun will find)."""
    global _resume
    _resume = note


def resume_note() -> str:
    if callable(_resume):
        try:
            return _resume()
        except Exception:  # noqa: BLE001 - a damaged folder: the rerun will say what is wrong with it
            return DEFAULT_RESUME
    return _resume


# --------------------------------------------------------------------------------------------
#                                     Who we are
# --------------------------------------------------------------------------------------------


def rank() -> int:
    return launch().rank


def world() -> int:
    return launch().world


def named(message: str, of_rank: int | None = None) -> str:
    """`message`, naming its rank when that is not rank 0 of a multi-process job."""
    r = rank() if of_rank is None else of_rank
    return f"rank {r} of {world()}: {message}" if world() > 1 and r != 0 else message


# --------------------------------------------------------------------------------------------
#                                     The store
# --------------------------------------------------------------------------------------------


def _prefix() -> str:
    return (f"sendvae/outcome/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/"
            f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/")


def _open_store():
    """A client of the job's store (the launcher's under torchrun), or None."""
    global _store
    if _store is None:
        _store = False
        if world() > 1 and os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
            try:
                from torch.distributed import TCPStore

                _store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=timedelta(seconds=5))
            except Exception:  # noqa: BLE001 - no store: every process speaks for itself
                _store = False
    return _store or None


def _post(key: str, value: str) -> bool:
    store = _open_store()
    if store is None:
        return False
    try:
        store.set(_prefix() + key, value)
        return True
    except Exception:  # noqa: BLE001 - the store went away: speak for ourselves
        return False


def _read(key: str) -> str | None:
    store = _open_store()
    if store is None:
        return None
    try:
        if not store.check([_prefix() + key]):
            return None
        return store.get(_prefix() + key).decode()
    except Exception:  # noqa: BLE001
        return None


def register_process() -> None:
    """Post this process's host and pid (distributed.init calls it once the group is up)."""
    _post(f"pid/{rank()}", f"{socket.gethostname()} {os.getpid()}")


def _ended(other: int) -> bool:
    """True when rank `other` ran on this machine and its process is gone (or a zombie)."""
    posted = _read(f"pid/{other}")
    if not posted:
        return False
    host, _, pid = posted.partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass
        return False


def _posts() -> dict[int, tuple[str, int, str]]:
    """{rank: (kind, exit code, message)} of the ranks that posted an outcome."""
    found = {}
    for r in range(world()):
        value = _read(f"said/{r}")
        if value:
            kind, code, message = value.split("\t", 2)
            found[r] = (kind, int(code), message)
    return found


# --------------------------------------------------------------------------------------------
#                                   Settling the outcome
# --------------------------------------------------------------------------------------------


def settle(kind: str, message: str, exit_code: int) -> Verdict:
    """Post this process's outcome ('error', 'stopped', 'lost' or 'crashed') and decide what it prints.

    SIGTERM and SIGINT are ignored from here on (the process exits right after): the launcher's
    SIGTERM to the survivors of a dead worker must not cut the one line short.
    """
    label = "stopped" if kind == "stopped" else "error"
    if world() <= 1:
        return Verdict(message, label, exit_code)
    if threading.current_thread() is threading.main_thread():  # process-wide; a thread's mask is not
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
    if kind == "stopped" and any(r != rank() and r not in _posts() and _ended(r) for r in range(world())):
        kind = "lost"  # the signal came from the launcher, because a process ended: that is the news
    if not _post(f"said/{rank()}", f"{kind}\t{exit_code}\t{message}"):
        return Verdict(named(message if kind != "lost" else f"{message}; {resume_note()}"), label, exit_code)
    if kind == "crashed":
        return Verdict(None, label, exit_code)
    if kind == "lost":
        return _lost(message)
    return _own(kind, message, exit_code, ERROR_WAIT_S if kind == "error" else STOP_WAIT_S)


def _own(kind: str, message: str, exit_code: int, wait: float) -> Verdict:
    """An error or a stop this rank met: said by rank 0, or by this rank unless a lower one says
    it; never a second time once a rank has said the job's line (a rank stopped alone, which
    the launcher answered by stopping the others)."""
    label = "stopped" if kind == "stopped" else "error"
    me = rank()
    deadline = time.monotonic() + (0.0 if me == 0 else wait)
    while True:
        if _spoken():
            return Verdict(None, label, exit_code)
        lower = [k for r, (k, _, _) in _posts().items() if r < me and k in ("error", "crashed", kind)]
        if lower:
            return Verdict(None, label, exit_code)
        if time.monotonic() >= deadline:
            return _speak(Verdict(named(message), label, exit_code))
        time.sleep(0.05)


def _spoken() -> bool:
    return any(_read(f"spoke/{r}") for r in range(world()))


def _speak(verdict: Verdict) -> Verdict:
    """This process prints the job's line: say so, so that no other prints one after it."""
    _post(f"spoke/{rank()}", "1")
    return verdict


def _lost(message: str) -> Verdict:
    """A collective call failed: wait until every rank posted or ended, then one rank names the silent ones."""
    deadline = time.monotonic() + LOST_WAIT_S
    while True:
        posts = _posts()
        silent = [r for r in range(world()) if r not in posts]
        ended = [r for r in silent if _ended(r)]
        if len(ended) == len(silent) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    spoke = {r: p for r, p in posts.items() if p[0] in ("error", "stopped", "crashed")}
    if spoke:  # a rank said why it left: its line is the job's
        first = min(spoke)
        kind, code, _ = spoke[first]
        return Verdict(None, "stopped" if kind == "stopped" else "error", code)
    reporter = min((r for r, p in posts.items() if p[0] == "lost"), default=rank())
    if reporter != rank():
        return Verdict(None, "error", 1)
    if not silent:
        return _speak(Verdict(f"the processes lost touch with each other ({message}); {resume_note()}", "error", 1))
    who = _ranks(silent)
    if len(ended) == len(silent):
        what = f"{who} of {world()} ended without a word (killed, out of memory, or a crash)"
    else:
        what = f"{who} of {world()} stopped answering (killed, out of memory, a crash, or its machine is gone)"
    note = resume_note()
    return _speak(Verdict(f"{what}; the other processes stopped with it. {note[0].upper()}{note[1:]}", "error", 1))


def _ranks(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ", ".join(map(str, ranks[:-1])) + f" and {ranks[-1]}"


# --------------------------------------------------------------------------------------------
#                                  Recognising a lost peer
# --------------------------------------------------------------------------------------------

_BACKEND_FAILURE = re.compile(r"connection (closed|reset) by peer|broken pipe|remote worker|gloo|nccl",
                              re.IGNORECASE)


def lost_peer(error: BaseException) -> BaseException | None:
    """The collective-call failure behind `error` (in its cause / context chain) in a multi-process
    job, else None."""
    if world() <= 1:
        return None
    try:
        from torch.distributed import DistError
    except ImportError:  # a torch built without distributed
        DistError = ()  # noqa: N806
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DistError) or (isinstance(error, RuntimeError) and _BACKEND_FAILURE.search(str(error))):
            return error
        error = error.__cause__ or error.__context__
    return None


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's "[.../pair.cc:561] " source location
