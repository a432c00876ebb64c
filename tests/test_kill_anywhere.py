"""`kill -9` at random moments of every command that writes, then a rerun: always the same bytes.

Slow (minutes): `pytest -m slow tests/test_kill_anywhere.py -s` prints one line per trial and a
summary ("N trials, N identical resumes"). Each command is run once uninterrupted for reference;
each trial starts it afresh and, once it has begun writing, kills it at a random moment of the
reference's writing time (from that first write to its last output), so the kill lands in
computing, the merge, a rename, a checkpoint or the export as chance has it; then reruns it to
the end and compares every output file with the reference.

A new command that writes resumable outputs joins by adding a row to `commands`: its arguments,
its --out name, the files whose bytes must match, and the file whose appearance means it has
begun writing. train-sit reads a latent cache and sample a SiT run, both made once beforehand.
`SENDVAE_KILL_COMMANDS=train-sit,sample` runs only those rows.
"""

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Command:
    args: tuple[str, ...]  # without --out
    out: str  # the --out name inside the trial folder
    compared: tuple[str, ...]  # files (relative to the trial folder) whose bytes must equal the reference's
    begins: str  # the file whose appearance starts its writing (kills are drawn from then on)


TRAIN = ("train-vae", "shapes", "--teacher", "dinov2-s", "--random-weights", "--vae", "tiny", "--preset", "tiny",
         "--resolution", "32", "--num-images", "32", "--batch-size", "4", "--steps", "6", "--checkpoint-every", "2",
         "--sample-every", "3", "--log-every", "1", "--workers", "0", "--quiet")


def commands(inputs: Path) -> dict[str, Command]:
    return {
        "extract": Command(
            ("extract", "shapes", "--teacher", "dinov2-s", "--random-weights", "--num-images", "48", "--resolution",
             "64", "--batch-size", "4", "--block-rows", "16", "--workers", "0", "--quiet"),
            "f.h5", ("f.h5", "f.h5.json"), "f.h5.parts/manifest.json"),
        "cache-latents": Command(
            ("cache-latents", "shapes", "--vae", "tiny", "--num-images", "600", "--resolution", "32", "--flip",
             "--batch-size", "25", "--block-rows", "200", "--workers", "0", "--quiet"),
            "z.h5", ("z.h5", "z.h5.json"), "z.h5.parts/manifest.json"),
        "train-vae": Command(
            TRAIN, "run",
            ("run/export/vae.safetensors", "run/export/vae.json", "run/checkpoints/step-000006/weights.safetensors"),
            "run/config.json"),
        "train-sit": Command(
            ("train-sit", str(inputs / "z.h5"), *SIT), "sit",
            ("sit/export/generator.safetensors", "sit/export/generator.json", "sit/checkpoints/step-000006/weights.safetensors"),
            "sit/config.json"),
        "sample": Command(
            ("sample", str(inputs / "sit"), "-n", "120", "--batch-size", "2", "--steps", "4", "--cfg", "2.0",
             "--precision", "fp64", "--quiet"),
            "samples", ("samples/samples.npz", "samples/sample.json", "samples/images/000000/000119.png"),
            "samples/sample.json"),
    }


SIT = ("--images", "shapes", "--teacher", "dinov2-s", "--random-weights", "--preset", "tiny", "--batch-size", "8",
       "--steps", "6", "--checkpoint-every", "2", "--sample-every", "3", "--log-every", "1", "--workers", "0",
       "--preview-count", "4", "--preview-steps", "4", "--quiet")


def make_inputs(folder: Path) -> Path:
    """The latent cache train-sit reads and the SiT run sample reads."""
    folder.mkdir()
    run_cli("cache-latents", "shapes", "--vae", "tiny", "--num-images", "64", "--resolution", "32", "--workers", "0",
            "--quiet", "--out", folder / "z.h5")
    run_cli("train-sit", folder / "z.h5", *SIT, "--out", folder / "sit")
    return folder


TRIALS_PER_COMMAND = 6


def leftovers(folder: Path) -> list[str]:
    """Temporary files a finished run must not leave behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if ".tmp" in p.name or p.name.endswith((".merging", ".creating", ".lock", ".parts")))


def stage(folder: Path, command: Command) -> str:
    """Where a killed run stood, from what it left on disk (for the report)."""
    names = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    if all((folder / f).exists() for f in command.compared):
        return "outputs complete, exiting"
    if any(".export.tmp" in n for n in names):
        return "export"
    if any(n.endswith(".merging") for n in names):
        return "merge"
    if any(n.endswith(".tmp") for n in names):
        return "checkpoint"
    if any(n.endswith(".parts") for n in names):
        return "rows"
    if any("/images/" in n and n.endswith(".png") for n in names):
        return "samples"
    if any(n.endswith("checkpoints/latest") for n in names):
        return "steps after a checkpoint"
    return "steps" if any(n.endswith("config.json") for n in names) else "start-up"


def start(command: Command, folder: Path, env) -> tuple[subprocess.Popen, float]:
    """Start the command; returns it and the moment it began writing (`command.begins` appeared)."""
    out = folder / command.out
    proc = subprocess.Popen([sys.executable, "-m", "sendvae_cli", *command.args, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (folder / command.begins).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    return proc, time.perf_counter()


def test_kill_9_anywhere_then_rerun_gives_identical_outputs(tmp_path):
    rng = random.Random(int(os.environ.get("SENDVAE_KILL_SEED", "0")))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    report = []
    only = [n for n in os.environ.get("SENDVAE_KILL_COMMANDS", "").split(",") if n]
    table = commands(make_inputs(tmp_path / "inputs"))
    for name, command in table.items():
        if only and name not in only:
            continue
        ref = tmp_path / f"ref-{name}"
        ref.mkdir()
        proc, began = start(command, ref, env)
        while proc.poll() is None and not all((ref / f).exists() for f in command.compared):
            time.sleep(0.01)
        work = time.perf_counter() - began  # from the first write to the last output: what the kills sample
        assert proc.wait(timeout=900) == 0
        for trial in range(TRIALS_PER_COMMAND):
            folder = tmp_path / f"{name}-{trial}"
            folder.mkdir()
            delay = rng.uniform(0.0, 1.0) * work
            proc, _ = start(command, folder, env)
            try:
                proc.wait(timeout=delay)
                where = "finished"
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                where = stage(folder, command)
            run_cli(*command.args, "--out", folder / command.out, timeout=900)
            same = all((folder / f).read_bytes() == (ref / f).read_bytes() for f in command.compared)
            left = leftovers(folder)
            report.append((name, trial, round(delay, 1), where, same, left))
            print(f"{name} trial {trial}: killed {delay:.1f}s into {work:.1f}s of work ({where}); "
                  f"rerun {'identical' if same else 'DIFFERENT'}; leftovers {left or 'none'}", flush=True)
    identical = sum(r[4] for r in report)
    print(f"{len(report)} trials, {identical} identical resumes, "
          f"{sum(r[3] != 'finished' for r in report)} killed mid-run", flush=True)
    assert identical == len(report), [r for r in report if not r[4]]
    assert all(not r[5] for r in report), [r for r in report if r[5]]
