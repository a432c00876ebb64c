"""Writing outputs safely: whole files or none, and write errors as one line.

* `atomic_file(path)` / `write_json_atomic(path, value)`: write a temporary name beside `path`
  (`.NAME.tmp-PID-TAG`), fsync, rename: a reader never sees half a file, a crash leaves the old
  one. `remove_stale_temporaries(folder)` deletes those a killed process left behind.
* `save_safetensors(tensors, path, metadata)`: the one safetensors writer; the same tensors
  always give the same bytes (and digest).
* `write_errors(path, needed=..., kept=...)`: a full disk, quota, read-only file system or
  missing permission becomes a `UserError` naming `path` (and the space needed, when known)
  that ends in "rerun to continue"; any other error passes through unchanged.

Every command that writes uses these (with `sendvae_cli.locks.hold_output_lock` around the
whole run); see docs/faults.md for how a new command should call them.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from sendvae_cli.errors import UserError


def write_json_atomic(path: Path, value: Any, default: Callable[[Any], Any] = str, *, sort_keys: bool = False) -> None:
    """Write JSON to a temporary name, then rename (`atomic_file`): a reader never sees half a
    file, and a full or read-only disk is one line naming `path`."""
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=default, sort_keys=sort_keys) + "\n")


# Wall-clock fields: useful on screen and to the caller, but they would make a result file differ
# between two runs of the same command, so `write_result_json` leaves them out of the file.
VOLATILE_KEYS = frozenset({"seconds", "samples_per_second", "created", "encode_seconds"})


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [_without_volatile(v) for v in value]
    return value


def write_result_json(path: Path, value: Any, default: Callable[[Any], Any] = str) -> None:
    """A command's result file (fid.json, probe.json, recon.json, ...) without wall-clock fields,
    so the same command on the same inputs writes the same bytes. Keys keep their order (the
    per-attribute tables follow the dataset's attribute order)."""
    write_json_atomic(path, _without_volatile(value), default=default)


# --------------------------------------------------------------------------------------------
#                       Write errors: one line naming the file, never a traceback
# --------------------------------------------------------------------------------------------

# What a user can fix: a full disk or quota, a read-only file system, missing permission.
WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.EFBIG: "file too large for this file system"}
_CODE = re.compile(r"\[Errno (\d+)\]|errno = (\d+)|Os \{ code: (\d+)|os error (\d+)\)")


def error_number(error: BaseException) -> int | None:
    """The errno of an OSError, or of a library error that only carries it in its text
    (h5py's nested HDF5 errors, safetensors' `IoError(Os { code: 28, .. })`)."""
    number = getattr(error, "errno", None)
    if isinstance(number, int):
        return number
    match = _CODE.search(str(error))
    return int(next(g for g in match.groups() if g)) if match else None


def free_bytes(path: Path) -> int | None:
    """Free space on the file system holding `path` (its nearest existing folder)."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def write_error_message(error: BaseException, path: Path | str | None = None, *,
                        needed: int | None = None, kept: str | None = None) -> str | None:
    """The one line for a write error a user can fix, or None for any other error."""
    number = error_number(error)
    if number not in WRITE_ERRNOS:
        return None
    where = path if path is not None else getattr(error, "filename", None)
    message = f"{where or 'writing'}: {WRITE_ERRNOS[number]}"
    if kept:
        message += f" ({kept})"
    if number in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(Path(where)) if where else None
        if needed is not None:
            message += f" (needs about {human_bytes(needed)}"
            message += f", {human_bytes(free)} free)" if free is not None else ")"
        elif free is not None:
            message += f" ({human_bytes(free)} free)"
        message += "; free some space and rerun to continue"
    elif number == errno.EROFS:
        message += "; choose a writable --out (or remount it read-write) and rerun to continue"
    else:
        message += "; check the folder's owner and permissions and rerun to continue"
    return message


@contextmanager
def write_errors(path: Path | str, *, needed: int | None = None, kept: str | None = None) -> Iterator[None]:
    """Turn a write error a user can fix (full disk, quota, read-only, permission) into a
    `UserError` naming `path`; everything written before stays as it was.

    Wrap every place that writes an output (also usable as a decorator):

        with write_errors(out / "sample-000123.png"):
            image.save(tmp); os.replace(tmp, final)

    `needed` (bytes), when known, is reported beside the free space; `kept` says what stays
    valid ("the last checkpoint, step-000200, is kept"). Anything else propagates
    unchanged. The CLI also applies `write_error_message` to any OSError that escapes a command,
    so a write that was not wrapped still ends in one line, only less precisely named.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - only the write errors below are translated
        message = write_error_message(error, path, needed=needed, kept=kept)
        if message is None:
            raise
        raise UserError(message) from None


# --------------------------------------------------------------------------------------------
#                                  Atomic, durable files
# --------------------------------------------------------------------------------------------


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name beside `path`, recognisable by `remove_stale_temporaries`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Delete `.NAME.tmp-PID-TAG` files and folders in `folder` left by processes that died
    (of any NAME, or only `name`); returns what was removed. Safe to call while other live
    processes write: their temporaries carry a living pid and are kept."""
    removed = []
    pattern = f".{name}.tmp-*" if name else ".*.tmp-*"
    try:
        candidates = list(Path(folder).glob(pattern))
    except OSError:
        return removed
    for tmp in candidates:
        match = re.search(r"\.tmp-(\d+)-[0-9a-f]+$", tmp.name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


@contextmanager
def atomic_file(path: Path, *, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`.

    A crash leaves either the old file or the new one, never half of one (the temporary is
    removed on error, or by `remove_stale_temporaries` after a kill). Write errors become one line.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    with write_errors(path, needed=needed):
        try:
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_folder(path.parent)


def umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------
#                     Writing safetensors: the same tensors give the same bytes
# --------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


class _WriteErrorKeeper:
    """A file for torch.save that keeps the OSError its writes met (see `save_torch`)."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def save_torch(value: Any, path: Path) -> None:
    """`torch.save(value, path)`, streamed, with a full disk the OSError (ENOSPC) that
    `write_errors` reports like any other: torch.save's zip writer turns a failed write into
    `RuntimeError: [enforce fail at inline_container.cc] unexpected pos`, so the write's own
    error is kept and raised instead."""
    import torch

    with open(path, "wb") as f:
        keeper = _WriteErrorKeeper(f)
        try:
            torch.save(value, keeper)
        except RuntimeError as error:
            if keeper.error is not None:
                raise keeper.error from error
            raise


def save_safetensors(tensors: Mapping[str, Any], path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (name -> torch tensor) as a safetensors file whose bytes depend only on
    the tensors and `metadata`: names sorted, data in that order, a compact sorted JSON header.
    The file is created by `open()`, so it gets the permissions of any file the user writes
    (0644 under umask 022), not safetensors' owner-only 0600.

    `safetensors.torch.save_file` orders its header as a hash map does, so identical weights gave
    files with different bytes and digests. Every safetensors file the toolkit writes goes
    through here (checkpoints, exports, ...); readers are unchanged (`safetensors.torch.load_file`).
    The file is written in place and streamed tensor by tensor: wrap the call in
    `atomic_file` to publish it atomically, as the checkpoint and export writers do.
    Errors are plain OSErrors (a full disk is `ENOSPC`), which `write_errors` reports.
    """
    import torch

    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    offset = 0
    ordered = []
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        dtype = _SAFETENSORS_DTYPES.get(str(tensor.dtype).removeprefix("torch."))
        if dtype is None:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors")
        tensor = tensor.to("cpu").contiguous()
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        ordered.append(tensor)
        offset += size
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for tensor in ordered:
            if tensor.numel():
                f.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
