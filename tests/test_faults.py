"""Faults a user meets: a full disk, a read-only folder, two runs on one output, a kill at the
worst moment. Each must end in one line, lose nothing already written, and a rerun must give
the same bytes as a run that never failed.

The full-disk and read-only cases run twice where possible: through a fault-injecting wrapper
(always), and on a real size-limited or read-only tmpfs (when this process may mount one,
as root on Linux; skipped otherwise).
"""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import invoke, run_cli
from sendvae_cli.caches import h5rows
from sendvae_cli.caches.h5rows import CHECKS, PROGRESS, ArraySpec, RowCache, batches
from sendvae_cli.errors import UserError
from sendvae_cli import io as sendvae_io
from sendvae_cli.io import save_torch, write_error_message, write_errors
from sendvae_cli.locks import hold_output_lock, lock_path
from sendvae_cli.io import save_safetensors

EXTRACT = ["extract", "shapes", "--teacher", "dinov2-s", "--random-weights", "--num-images", "16",
           "--resolution", "64", "--batch-size", "4", "--block-rows", "8", "--workers", "0", "--quiet"]
LATENTS = ["cache-latents", "shapes", "--vae", "tiny", "--num-images", "64", "--resolution", "128",
           "--batch-size", "8", "--block-rows", "32", "--workers", "0", "--quiet"]
TRAIN = ["train-vae", "shapes", "--teacher", "dinov2-s", "--random-weights", "--vae", "tiny", "--preset", "tiny",
         "--resolution", "32", "--num-images", "16", "--batch-size", "4", "--steps", "4", "--checkpoint-every", "2",
         "--sample-every", "4", "--workers", "0", "--quiet"]
ARRAYS = {"x": ArraySpec((3, 2), "float16"), "y": ArraySpec((), "int64")}


def rows(lo, hi):
    x = np.arange(lo * 6, hi * 6, dtype=np.float16).reshape(hi - lo, 3, 2)
    return {"x": x, "y": np.arange(lo, hi, dtype=np.int64)}


def one_line_error(proc, *fragments):
    """Exit code 2 and one `error:` line holding every fragment (after the random-weights warning)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------------------------
#                       Real small or read-only file systems (root only)
# --------------------------------------------------------------------------------------------


def _mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False):
    """A tmpfs of `size` at `folder` for the body; the test is skipped where mounting is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux); the wrapper variant covers this path")
    try:
        if read_only and not _mount("-o", "remount,ro", str(folder)):
            pytest.skip("cannot remount a tmpfs read-only here")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def resize(folder: Path, size: str) -> None:
    assert _mount("-o", f"remount,size={size}", str(folder))


@pytest.fixture(scope="module")
def clean_extract(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "f.h5"
    assert invoke(*EXTRACT, "--out", out).returncode == 0
    return out


@pytest.fixture(scope="module")
def clean_latents(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "z.h5"
    assert invoke(*LATENTS, "--out", out).returncode == 0
    return out


class FullDisk:
    """A fault-injecting wrapper around the row writer: `ENOSPC` from the `after`-th write on."""

    def __init__(self, monkeypatch, after: int):
        self.calls = 0
        real = h5rows._pwrite_all

        def failing(fd, data, offset):
            self.calls += 1
            if self.calls > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, data, offset)

        monkeypatch.setattr(h5rows, "_pwrite_all", failing)


# --------------------------------------------------------------------------------------------
#                                      Full disk
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, clean", [(EXTRACT, "clean_extract"), (LATENTS, "clean_latents")])
def test_write_error_mid_run_is_one_line_and_the_rerun_gives_the_same_bytes(command, clean, tmp_path, monkeypatch,
                                                                            request):
    out = tmp_path / "c.h5"
    with monkeypatch.context() as patch:
        FullDisk(patch, after=7)  # the first blocks' rows are written, then the disk is full
        proc = invoke(*command, "--out", out)
    one_line_error(proc, str(out) + ".parts/block-", "no space left on the device", "rerun to continue")
    assert not out.exists()
    progress = h5rows.parts_progress(out)
    assert 0 < progress["rows_done"] < progress["rows"]  # what was counted before the error stays counted
    assert invoke(*command, "--out", out).returncode == 0
    assert out.read_bytes() == request.getfixturevalue(clean).read_bytes()


def test_full_disk_during_extract_on_a_small_tmpfs(tmp_path, clean_extract):
    with tmpfs(tmp_path / "small", "128k") as disk:
        out = disk / "f.h5"
        proc = invoke(*EXTRACT, "--out", out)
        one_line_error(proc, str(disk), "no space left on the device", "free", "rerun to continue")
        resize(disk, "4m")  # free some space
        assert invoke(*EXTRACT, "--out", out).returncode == 0
        assert out.read_bytes() == clean_extract.read_bytes()
        assert json.loads(Path(str(out) + ".json").read_text())["teacher"] == "dinov2-s"


def test_full_disk_at_the_merge_keeps_the_rows_on_a_small_tmpfs(tmp_path, clean_latents):
    with tmpfs(tmp_path / "small", "192k") as disk:  # the blocks fit, the merged file does not
        out = disk / "z.h5"
        proc = invoke(*LATENTS, "--out", out)
        one_line_error(proc, str(out) + ".merging", "no space left on the device", "rerun to continue")
        assert h5rows.parts_progress(out)["blocks_done"] == 2 and not Path(str(out) + ".merging").exists()
        resize(disk, "4m")
        assert invoke(*LATENTS, "--out", out).returncode == 0
        assert out.read_bytes() == clean_latents.read_bytes()


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_on_a_small_tmpfs(tmp_path):
    """A disk with room for the run's first checkpoint and half of its second (the size is taken
    from an uninterrupted run: 38 MB a checkpoint at the tiny preset, 130 MB at a former one)."""
    clean = tmp_path / "clean"
    assert invoke(*TRAIN, "--out", clean).returncode == 0
    one = sum(f.stat().st_size for f in (clean / "checkpoints" / "step-000002").rglob("*") if f.is_file())
    rest = sum(f.stat().st_size for f in clean.rglob("*") if f.is_file() and "checkpoints" not in f.parts)
    with tmpfs(tmp_path / "small", f"{(int(1.5 * one) + rest) // 2**20 + 1}m") as disk:
        out = disk / "run"
        proc = invoke(*TRAIN, "--out", out)
        one_line_error(proc, str(out / "checkpoints" / "step-000004.tmp"), "no space left on the device",
                       "the last checkpoint, step-000002, is kept", "rerun to continue")
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000002"]
        resize(disk, "600m")
        assert invoke(*TRAIN, "--out", out).returncode == 0
        for name in ("export/vae.safetensors", "export/vae.json", "checkpoints/step-000004/weights.safetensors"):
            assert (out / name).read_bytes() == (clean / name).read_bytes()


def test_a_row_whose_write_was_lost_is_recomputed_never_merged(tmp_path):
    cache = RowCache(tmp_path / "c.h5", 20, ARRAYS, {"k": 1}, block_rows=10)
    cache.prepare(True)
    blocks = cache.open_blocks(0, 1)
    for block, index in batches(blocks, 4):
        block.write(rows(index[0], index[-1] + 1))
    # What the old writer allowed: the counter on disk, the row's bytes not (zeros).
    damaged = blocks[1]
    h5rows._pwrite_all(damaged.fd, np.zeros((1, 3, 2), "<f2"), damaged.offsets["x"] + 3 * 12)
    for block in blocks:
        block.close()
    with pytest.raises(UserError, match="block-000001.h5 from row 13.*rerun to continue"):
        cache.merge({})
    assert not cache.out.exists()
    again = cache.open_blocks(0, 1, verify=True)
    assert [b.rows_done for b in again] == [10, 3]  # rewound to the damaged row
    for block, index in batches(again, 4):
        block.write(rows(index[0], index[-1] + 1))
    for block in again:
        block.close()
    cache.merge({})
    with h5py.File(cache.out, "r") as f:
        np.testing.assert_array_equal(f["x"][:], rows(0, 20)["x"])


def test_a_block_taken_over_midway_is_checked_against_its_crcs(tmp_path):
    cache = RowCache(tmp_path / "c.h5", 10, ARRAYS, {"k": 1}, block_rows=10)
    cache.prepare(True)
    (block,) = cache.open_blocks(0, 1)
    block.write(rows(0, 6))
    h5rows._pwrite_all(block.fd, np.zeros(1, "<i8"), block.offsets["y"] + 4 * 8)
    block.close()
    (again,) = cache.open_blocks(0, 1, verify=True)
    assert again.rows_done == 4
    with h5py.File(again.path, "r", locking=False) as f:
        assert f[PROGRESS][0] == 4 and f[CHECKS].shape == (10,)
    again.close()


# --------------------------------------------------------------------------------------------
#                                      Read-only output
# --------------------------------------------------------------------------------------------


class FullAfter:
    """A file that takes `room` bytes, then fails every write with ENOSPC, as a full disk does."""

    def __init__(self, path, mode, room):
        self.file, self.room = open(path, mode), room

    def write(self, data):
        data = bytes(data)
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def flush(self):
        self.file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_torch_save_on_a_full_disk_is_the_one_line_of_every_other_full_disk(tmp_path, monkeypatch):
    # torch.save's own zip writer reports a failed write as "RuntimeError: [enforce fail at
    # inline_container.cc] unexpected pos"; save_torch raises the write's OSError instead.
    monkeypatch.setattr(sendvae_io, "open", lambda path, mode: FullAfter(path, mode, room=1000), raising=False)
    with pytest.raises(UserError, match=r"state.pt: no space left on the device \(the last checkpoint, step-000002, "
                                        r"is kept\).*rerun to continue"):
        with write_errors(tmp_path / "state.pt", kept="the last checkpoint, step-000002, is kept"):
            save_torch({"adam": torch.zeros(100_000)}, tmp_path / "state.pt")
    monkeypatch.undo()
    save_torch({"adam": torch.arange(5)}, tmp_path / "state.pt")
    assert torch.equal(torch.load(tmp_path / "state.pt", weights_only=True)["adam"], torch.arange(5))


def test_full_disk_in_a_checkpoints_state_on_a_small_tmpfs(tmp_path):
    """The same on a real full file system (where this process may mount one)."""
    with tmpfs(tmp_path / "small", "1m") as disk:
        with pytest.raises(UserError, match="no space left on the device"):
            with write_errors(disk / "state.pt"):
                save_torch({"adam": torch.zeros(1_000_000)}, disk / "state.pt")


def test_write_errors_are_one_line_naming_the_file(tmp_path):
    for number, words in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "permission"),
                          (errno.EDQUOT, "quota"), (errno.EPERM, "not permitted")):
        with pytest.raises(UserError) as caught:
            with write_errors(tmp_path / "x.h5", needed=3_000_000):
                raise OSError(number, os.strerror(number))
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / 'x.h5'}: ") and words in message and "rerun to continue" in message
    assert "needs about 3.0 MB" in write_error_message(OSError(errno.ENOSPC, "x"), tmp_path, needed=3_000_000)
    # Libraries that hide the errno in their text (safetensors, h5py) are recognised too.
    assert write_error_message(RuntimeError("I/O error: No space left on device (os error 28)"), "p")
    assert write_error_message(ValueError("something else"), "p") is None
    with pytest.raises(KeyError):
        with write_errors(tmp_path):
            raise KeyError("not a write error")


@contextmanager
def read_only_folder(tmp_path):
    """A read-only folder: a read-only tmpfs as root, permission bits otherwise."""
    folder = tmp_path / "ro"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    with tmpfs(folder, "1m", read_only=True):
        yield folder


@pytest.mark.parametrize("command", [EXTRACT, TRAIN])
def test_read_only_out_is_one_line(command, tmp_path):
    with read_only_folder(tmp_path) as folder:
        proc = invoke(*command, "--out", folder / "out")
        one_line_error(proc, str(folder / "out"), "rerun to continue")
        assert any(w in proc.stderr for w in ("read-only", "permission denied"))
        assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------------------------
#                                   One run per output
# --------------------------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sendvae_cli.locks import hold_output_lock
    with hold_output_lock(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin
""")


@contextmanager
def held_by_another_process(output: Path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


@pytest.mark.parametrize("command", [EXTRACT, LATENTS, TRAIN])
def test_a_second_run_on_the_same_output_names_the_first_and_writes_nothing(command, tmp_path):
    out = tmp_path / "out"
    with held_by_another_process(out) as holder:
        proc = invoke(*command, "--out", out)
        one_line_error(proc, f"--out {out}: in use by another sendvae run", f"pid {holder.pid}")
        assert [p.name for p in tmp_path.iterdir()] == ["out.lock"]  # nothing written
    assert list(tmp_path.iterdir()) == []  # released with its holder


def test_two_extract_processes_on_one_output_then_a_stale_lock_is_taken_over(tmp_path, clean_extract):
    out = tmp_path / "f.h5"
    first = subprocess.Popen([sys.executable, "-m", "sendvae_cli", *EXTRACT, "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not lock_path(out).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # keep it running (and holding the lock) for as long as we look
    try:
        assert not out.exists(), "finished before it could be caught running"
        second = run_cli(*EXTRACT, "--out", out, check=False)
        one_line_error(second, "in use by another sendvae run", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)  # its lock file stays behind, naming a dead process
        first.wait()
    assert lock_path(out).exists()
    run_cli(*EXTRACT, "--out", out)
    assert out.read_bytes() == clean_extract.read_bytes() and not lock_path(out).exists()


def test_the_lock_excludes_only_while_held(tmp_path):
    out = tmp_path / "x"
    lock_path(out).write_text('{"pid": 999999999, "host": "gone"}')  # left by a killed run
    with hold_output_lock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match="already being written by this process"):
            with hold_output_lock(out):
                pass
        with hold_output_lock(out / "export"):  # inside an output this process holds: covered by it
            assert not lock_path(out / "export").exists()
    assert not lock_path(out).exists()
    with hold_output_lock(out):  # free again
        pass


def test_an_export_folder_in_use_elsewhere_is_refused(tmp_path):
    from sendvae_cli.vae.autoencoder import VAE_CONFIGS
    from sendvae_cli.vae.export import export_vae
    from sendvae_cli.vae.formats import build_vae

    folder = tmp_path / "vae"
    with held_by_another_process(folder) as holder:
        with pytest.raises(UserError, match=f"export folder {folder}: in use by another sendvae run.*pid {holder.pid}"):
            export_vae(build_vae(VAE_CONFIGS["tiny-f16d8"]), folder)
    assert not folder.exists()
    # A temporary a killed export left beside the folder is removed by the next export.
    stale = tmp_path / ".vae.tmp-999999999-0123abcd"
    stale.mkdir()
    export_vae(build_vae(VAE_CONFIGS["tiny-f16d8"]), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]


# --------------------------------------------------------------------------------------------
#                               Side files and leftovers
# --------------------------------------------------------------------------------------------


def test_side_file_is_written_before_the_rename_and_restored_when_missing(tmp_path, clean_extract, monkeypatch):
    out = tmp_path / "f.h5"
    side = Path(str(out) + ".json")

    real_replace = os.replace

    class Killed(Exception):
        pass

    def killed_at_the_rename(src, dst):
        if Path(dst) == out:
            raise Killed  # stands for kill -9 between the side file and OUT
        return real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", killed_at_the_rename)
        with pytest.raises(Killed):
            invoke(*EXTRACT, "--out", out)
    assert side.exists() and not out.exists()
    assert invoke(*EXTRACT, "--out", out).returncode == 0
    assert out.read_bytes() == clean_extract.read_bytes()
    resolved = side.read_text()
    side.unlink()  # what a kill right after the rename left before side files came first
    proc = invoke(*[a for a in EXTRACT if a != "--quiet"], "--out", out)
    assert "already complete" in proc.stderr and side.read_text() == resolved


# --------------------------------------------------------------------------------------------
#                                 Deterministic safetensors
# --------------------------------------------------------------------------------------------


def test_safetensors_bytes_depend_only_on_the_tensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    tensors = {"b.weight": torch.randn(4, 3, generator=g), "a": torch.arange(5), "c": torch.ones(2, dtype=torch.bfloat16),
               "empty": torch.zeros(0), "flag": torch.tensor([True, False]), "h": torch.randn(3, generator=g).half(),
               "view": torch.randn(4, 4, generator=g).t()}
    save_safetensors(tensors, tmp_path / "a.safetensors", {"format": "pt", "layout": "ldm"})
    save_safetensors(dict(reversed(list(tensors.items()))), tmp_path / "b.safetensors", {"layout": "ldm", "format": "pt"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = load_file(str(tmp_path / "a.safetensors"))
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == tensors[k].dtype for k in tensors)
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "layout": "ldm"}
