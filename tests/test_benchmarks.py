"""The step benchmarks still run against the code they measure.

A benchmark imports the trainers' parts directly (objective, EMA, mapper, losses), so an API change
there breaks it without any command failing. Each runs here at its smallest size, once; the
figures themselves are only ever reported (benchmarks/README.md), never asserted.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def run_benchmark(name: str, *args: str, tmp_path) -> dict:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_train_sit_step_benchmark_runs_the_whole_step(tmp_path):
    result = run_benchmark("train_sit_step", "--model", "SiT-tiny/1", "--latent", "4x8x8", "--teacher-width", "16",
                           "--encoder-depth", "1", "--projector-width", "32", "--num-classes", "5", "--batch", "2",
                           "--repeats", "1", "--no-data", "--device", "cpu", tmp_path=tmp_path)
    assert result["tokens"] == 64 and result["step_tflop"] > 0
    assert result["whole"]["wall_s"] > 0 and result["bare"]["wall_s"] > 0


@pytest.mark.parametrize("gan", [True, False], ids=["with-gan", "no-gan"])
def test_train_vae_step_benchmark_runs_the_whole_step(tmp_path, gan):
    result = run_benchmark("train_vae_step", "--vae", "tiny-f4d4", "--teacher", "tv-mobilenet-v2", "--resolution", "64",
                           "--batch", "2", "--repeats", "1", "--no-lpips", "--mapper-width", "32",
                           "--mapper-hidden", "64", "--device", "cpu", *([] if gan else ["--no-gan"]),
                           tmp_path=tmp_path)
    assert result["step_s"] > 0 and result["step_tflop"] > 0
