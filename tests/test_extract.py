"""`sendvae extract` end to end: real processes, real HDF5, kill -9, torchrun."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import run_cli

SMALL = ["shapes", "--teacher", "dinov2-s", "--random-weights", "--num-images", "48", "--resolution", "64",
         "--batch-size", "4", "--workers", "1", "--quiet"]


def payload(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}, {k: (v if not isinstance(v, np.ndarray) else v.tolist()) for k, v in f.attrs.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    run_cli("extract", *SMALL, "--out", out)
    return out


def test_extract_shapes_at_256(tmp_path):
    out = tmp_path / "f.h5"
    run_cli("extract", "shapes", "--teacher", "dinov2-s", "--random-weights", "--num-images", "16",
            "--resolution", "256", "--batch-size", "8", "--workers", "1", "--out", out)
    with h5py.File(out, "r") as f:
        tokens = f["tokens"]
        assert tokens.shape == (16, 256, 384) and tokens.dtype == np.float16
        assert tokens.chunks == (1, 256, 384) and tokens.compression is None
        assert f["labels"].shape == (16,) and set(f["labels"][:]) <= set(range(5))
        assert f["rows"][3].decode() == "shapes/seed0/3"
        attrs = f.attrs
        assert attrs["teacher"] == "dinov2-s" and attrs["teacher_width"] == 384
        assert list(attrs["token_grid"]) == [16, 16] and attrs["resolution"] == 256
        assert attrs["complete"] and attrs["format_version"] == 1
        assert '"kind": "shapes"' in attrs["source"] and len(attrs["row_order_sha256"]) == 64
        assert np.isfinite(tokens[:].astype(np.float32)).all()
    assert (tmp_path / "f.h5.json").exists()


def test_rerun_of_a_complete_cache_changes_nothing(reference, tmp_path):
    before = reference.read_bytes()
    proc = run_cli("extract", *[a for a in SMALL if a != "--quiet"], "--out", reference)
    assert "already complete" in proc.stderr
    assert reference.read_bytes() == before


def test_other_configuration_on_same_output_is_refused(reference):
    before = reference.read_bytes()
    proc = run_cli("extract", *SMALL[:1], "--teacher", "mae-b", *SMALL[3:], "--out", reference, check=False)
    assert proc.returncode == 2
    assert "exists with another configuration" in proc.stderr and "Traceback" not in proc.stderr
    assert reference.read_bytes() == before


def test_kill_9_then_rerun_gives_the_same_file(reference, tmp_path):
    out = tmp_path / "k.h5"
    block = tmp_path / "k.h5.parts" / "block-000000.h5"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    interrupted = False
    for delay in (1.5, 0.5, 3.0, 0.1):
        proc = subprocess.Popen([sys.executable, "-m", "sendvae_cli", "extract", *SMALL, "--out", str(out)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not block.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():  # finished before the kill; try an earlier moment
            out.unlink()
            continue
        with h5py.File(block, "r") as f:
            done = int(f["_rows_done"][0])
        if 0 < done < 48:
            interrupted = True
            break
    assert interrupted, "could not kill the run mid-way"
    run_cli("extract", *SMALL, "--out", out)
    assert out.read_bytes() == reference.read_bytes()
    assert not (tmp_path / "k.h5.parts").exists()


def test_torchrun_two_processes_match_one(reference, tmp_path):
    out = tmp_path / "d.h5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sendvae_cli", "extract", *SMALL, "--block-rows", "24", "--out", str(out)]
    # Two blocks of 24 rows so that each rank owns one.
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_data, ref_attrs = payload(reference)
    data, attrs = payload(out)
    for key in ref_data:
        np.testing.assert_array_equal(data[key], ref_data[key], err_msg=key)
    assert {k: v for k, v in attrs.items() if k != "config"} == {k: v for k, v in ref_attrs.items() if k != "config"}


def test_folder_of_images_with_a_corrupt_file(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 60, 3), 40 * i + (cls == "b") * 100, np.uint8)).save(root / cls / f"{i}.png")
    (root / "b" / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "f.h5"
    proc = run_cli("extract", root, "--teacher", "dinov2-s", "--random-weights", "--resolution", "32",
                   "--workers", "0", "--out", out)
    assert proc.stderr.count("skipped 1 unreadable image") == 1 and "b/bad.png" in proc.stderr
    with h5py.File(out, "r") as f:
        assert f["tokens"].shape == (6, 4, 384)
        assert list(f["labels"][:]) == [0, 0, 0, 1, 1, 1]
        assert [r.decode() for r in f["rows"][:2]] == ["a/0.png", "a/1.png"]
    strict = run_cli("extract", root, "--teacher", "dinov2-s", "--random-weights", "--resolution", "32",
                     "--strict", "--out", tmp_path / "g.h5", check=False)
    assert strict.returncode == 2 and "unreadable image b/bad.png" in strict.stderr
    assert not (tmp_path / "g.h5").exists()
