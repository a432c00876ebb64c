"""SIGTERM during a row cache: the batch in hand is written, the run says where it stopped, a rerun
continues from there and ends with the same cache as an uninterrupted run."""

import os
import signal

import h5py
import numpy as np

from conftest import invoke
from sendvae_cli.caches import encode_rows

ARGS = ["cache-latents", "shapes", "--num-images", "40", "--resolution", "32", "--vae", "tiny", "--random-weights",
        "--batch-size", "4", "--block-rows", "8", "--workers", "0"]


def test_sigterm_then_rerun_gives_the_uninterrupted_cache(tmp_path, monkeypatch):
    assert invoke(*ARGS, "--out", tmp_path / "whole.h5").returncode == 0

    real = encode_rows.to_model_range
    calls = []

    def scheduler_kills_at_the_third_batch(images):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a cluster scheduler sends before the kill
        return real(images)

    monkeypatch.setattr(encode_rows, "to_model_range", scheduler_kills_at_the_third_batch)
    out = tmp_path / "cut.h5"
    proc = invoke(*ARGS, "--out", out)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped:" in proc.stderr and "SIGTERM received; stopped after row 12 of 40" in proc.stderr
    assert "Rerun the same command to continue" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()  # nothing merged yet; the parts are kept

    monkeypatch.setattr(encode_rows, "to_model_range", real)
    proc = invoke(*ARGS, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "continuing with rows 13–40 of 40" in proc.stderr
    with h5py.File(tmp_path / "whole.h5", "r") as a, h5py.File(out, "r") as b:
        assert sorted(a) == sorted(b)
        for name in a:
            if isinstance(a[name], h5py.Dataset):
                assert np.array_equal(a[name][()], b[name][()]), name
    proc = invoke(*ARGS, "--out", out)
    assert "already complete" in proc.stderr and "continuing" not in proc.stderr
