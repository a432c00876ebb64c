"""The README's main job (scripts/main_job.sh) runs end to end at a smaller size, a rerun does
nothing, and a rerun with more SiT steps continues the generator and remakes only what it fed.

Slow (a few minutes on 2 cores: every command of the chain starts a Python process and loads the
real MobileNetV2 teacher); run with `-m slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["extract", "train-vae", "cache-latents", "train-sit", "sample", "grid", "reference", "fid", "probe", "recon"]


def run_job(out: Path, sit_steps: int = 4) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out), VAE_STEPS="4", SIT_STEPS=str(sit_steps), NUM_IMAGES="48", NUM_SAMPLES="10",
               REF_IMAGES="20", DECODER_ONLY="0.5", PROBE_IMAGES="200", RECON_IMAGES="8", SAMPLE_STEPS="3",
               SENDVAE=f"{sys.executable} -m sendvae_cli", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` of this venv
    return subprocess.run(["bash", str(ROOT / "scripts" / "main_job.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_the_chain_runs_end_to_end_and_a_rerun_does_nothing(tmp_path):
    pytest.importorskip("sendvae_torchvision")
    out = tmp_path / "main"
    first = run_job(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # Every command is printed before it runs.
    for command in ("extract", "train-vae", "cache-latents", "train-sit", "sample", "fid", "probe", "recon"):
        assert f"-m sendvae_cli {command} " in first.stdout
    # One recipe on every CPU: the VAE trains in fp32 unless VAE_PRECISION says otherwise.
    assert "--precision fp32 " in first.stdout
    # the knob reaches train-vae (its last 2 steps), and the alignment starts half-way through the others
    assert "--steps 4 --align-start 1 " in first.stdout and "--decoder-only 0.5 " in first.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["seconds"] > 0 and s["output"] for s in summary["steps"])
    assert summary["fd"] is not None and summary["fd"] >= 0
    assert 0 <= summary["probe_macro_f1"]["send-vae"] <= 1
    assert summary["psnr"]["send-vae"] > 0
    assert (out / "summary.png").stat().st_size > 0
    for path in ("vae/export/vae.json", "latents.h5", "sit/export/generator.json", "samples/samples.npz", "grid/grid.png",
                 "probe/probe.png", "recon/recon.json"):
        assert (out / path).exists(), path

    again = run_job(out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert all(f"# {step}: done before" in again.stdout for step in STEPS)
    assert "-m sendvae_cli train-vae " not in again.stdout
    assert json.loads((out / "summary.json").read_text())["steps"] == summary["steps"]

    # More generator steps: train-sit continues where it stopped; the samples, the grid and the FD
    # of the old model are removed and made again; the VAE, the reference, probe and recon stay.
    old_samples = (out / "samples" / "samples.npz").read_bytes()
    longer = run_job(out, sit_steps=8)
    assert longer.returncode == 0, longer.stdout[-3000:] + longer.stderr[-3000:]
    assert "continuing at step 4 of 8" in longer.stdout + longer.stderr
    remade = ["sample", "grid", "fid"]
    assert all(f"# {step}: made from an earlier step's old output" in longer.stdout for step in remade)
    assert all(f"# {step}: done before" in longer.stdout for step in STEPS if step not in remade + ["train-sit"])
    assert (out / "samples" / "samples.npz").read_bytes() != old_samples
    assert [s["step"] for s in json.loads((out / "summary.json").read_text())["steps"]] == STEPS
