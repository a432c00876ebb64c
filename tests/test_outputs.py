"""Outputs for batch jobs and collaborators: progress lines in a log file, files others can read."""

import json
import os
import re
import stat
import subprocess
import sys

import pytest

TRAIN = ["train-vae", "shapes", "--teacher", "dinov2-s", "--random-weights", "--vae", "tiny", "--preset", "tiny",
         "--resolution", "32", "--num-images", "32", "--batch-size", "4", "--steps", "4", "--checkpoint-every", "2",
         "--sample-every", "4", "--log-every", "2", "--stats-images", "8", "--workers", "0"]
CACHE = ["cache-latents", "shapes", "--vae", "tiny", "--num-images", "64", "--resolution", "32", "--batch-size", "16",
         "--workers", "0"]


def logged(args, log):
    """`sendvae ARGS > log 2>&1` under umask 022, as a cluster batch job runs it."""
    env = dict(os.environ, SENDVAE_PROGRESS_SECONDS="0", COLUMNS="200")
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "sendvae_cli", *map(str, args)], stdout=f, stderr=subprocess.STDOUT,
                       env=env, timeout=900, check=True, preexec_fn=lambda: os.umask(0o022))
    return log.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outputs")
    train = logged([*TRAIN, "--out", tmp / "run"], tmp / "train.log")
    cache = logged([*CACHE, "--out", tmp / "latents.h5"], tmp / "cache.log")
    return tmp, train, cache


def test_a_redirected_run_writes_progress_lines(runs):
    _, train, cache = runs
    steps = re.findall(r"^train-vae.*?\s(\d+)/4 step\s+[\d.,]+ step/s\s+elapsed \S+\s+ETA", train, flags=re.M)
    assert steps[-1] == "4" and len(steps) >= 3, train
    assert re.search(r"^train-vae align [\d.]+ rec [\d.]+", train, flags=re.M), train  # the key losses
    rows = re.findall(r"\s(\d+)/64 img\s+[\d.,]+ img/s\s+elapsed \S+\s+ETA", cache)
    assert rows and rows[-1] == "64", cache


def test_exports_checkpoints_and_caches_are_readable_by_others(runs):
    tmp, _, _ = runs
    files = [tmp / "run" / "export" / "vae.safetensors", tmp / "run" / "export" / "vae.json",
             tmp / "run" / "checkpoints" / "step-000004" / "weights.safetensors", tmp / "run" / "config.json",
             tmp / "latents.h5"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, (path, oct(path.stat().st_mode))


def test_result_files_leave_out_wall_clock_fields(tmp_path):
    from sendvae_cli.io import write_result_json

    write_result_json(tmp_path / "a.json", {"b": 1, "seconds": 2.5, "runs": [{"created": "now", "x": 1}],
                                            "a": {"encode_seconds": 3, "samples_per_second": 9, "y": 2}})
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": 1, "runs": [{"x": 1}], "a": {"y": 2}}
    assert list(json.loads((tmp_path / "a.json").read_text())) == ["b", "runs", "a"]  # order kept
