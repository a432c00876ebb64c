"""One writer per output: a lock beside every file or folder a command writes.

Two runs writing the same cache, run folder, export or sample folder would interleave their
rows, checkpoints or files. Every command that writes an output therefore holds a lock on it
for the life of the process:

    from sendvae_cli.locks import hold_output_lock

    with hold_output_lock(out, option="--out"):
        ...  # everything that writes `out` (and its .parts/, .json, checkpoints, export, ...)

How it works, and why it is safe:

* The lock is `OUT.lock`, a small file *beside* the output (so the output's own folder stays
  untouched until the run owns it). It is locked with a POSIX record lock (`fcntl.lockf`),
  which the kernel releases when the process ends in any way, `kill -9` included: a lock
  left by a killed run is simply taken over by the next one, nothing to clean by hand. POSIX
  locks are not inherited by forked children, so data-loader workers that outlive a killed
  run do not keep it locked; they also work across machines on NFS.
* The holder writes its pid, host and command into the file; a second run that finds the lock
  taken reports them in one line (`UserError`, exit code 2) and writes nothing.
* On release the holder deletes the file while still holding the lock. A run that opened the
  file just before it was deleted notices, after locking, that its file is no longer the one at
  `OUT.lock`, and starts over, so two runs can never both believe they hold it.
* Within one process the same output cannot be locked twice (POSIX locks do not exclude their
  own process, so that is checked here). An output inside one this process already holds (the
  export folder inside a training run's folder) is covered by that lock and takes none of its own.

Only rank 0 of a multi-process run should hold the lock (pass `enabled=dist.is_main`); the
other ranks write nothing outside the blocks rank 0 assigned them.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sendvae_cli.errors import UserError

_HELD: set[str] = set()


def lock_path(output: Path) -> Path:
    """The lock file of an output (a file or a folder): `OUT.lock` beside it."""
    output = Path(output).expanduser()
    return output.with_name(output.name + ".lock")


def _describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return "another process (its details are not readable)"
    where = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    started = holder.get("started")
    if started:
        where += f", started {started}"
    command = holder.get("command")
    if command:
        where += f": {command}"
    return where


def _try_lock(path: Path) -> int | None:
    """An open, locked descriptor of `path`, or None when another process holds it."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EACCES, errno.EAGAIN):
                return None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder deleted it as we opened it: take the new file


@contextmanager
def hold_output_lock(output: Path, *, option: str = "--out", enabled: bool = True) -> Iterator[None]:
    """Hold the lock of `output` for the body; a `UserError` naming the holder if it is taken.

    `option` names the flag in the message (`--out`, `--features`, ...). With `enabled=False`
    (ranks other than 0) it does nothing. A folder that cannot take the lock file (read-only,
    full) is reported as one line like any other write error.
    """
    if not enabled:
        yield
        return
    output = Path(output).expanduser()
    path = lock_path(output)
    key = output.resolve()
    if str(key) in _HELD:
        raise UserError(f"{option} {output}: already being written by this process (pid {os.getpid()})")
    if any(str(parent) in _HELD for parent in key.parents):
        yield  # inside an output this process holds: covered by its lock
        return
    from sendvae_cli.io import write_errors

    unsupported = False
    with write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = _try_lock(path)
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            unsupported = True
    if unsupported:
        print(f"warning: {path}: this file system does not support locks; nothing stops two runs on {output}",
              file=sys.stderr)
        yield
        return
    if fd is None:
        raise UserError(f"{option} {output}: in use by another sendvae run ({_describe_holder(path)}); "
                        f"wait for it to finish or stop it, then rerun")
    _HELD.add(str(key))
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(["sendvae", *sys.argv[1:]])[:300],
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only the holder's details are missing
        yield
    finally:
        _HELD.discard(str(key))
        try:
            os.unlink(path)  # while still locked: see the module docstring
        except OSError:
            pass
        os.close(fd)
