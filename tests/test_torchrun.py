"""Multi-process runs as a cluster user meets them: every documented `torchrun` line, the tiny
presets on 2 processes, sample's start-up, and one outcome per job when a worker dies or stops.

Lines at their documented world size are parsed in this process with WORLD_SIZE faked and the
pipeline replaced by a probe (nothing heavy runs); the 2-process runs are real (gloo on CPU).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, invoke, run_cli

DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`(torchrun [^`]+)`(?!`)")
PROGRAM = re.compile(r"\s(?:-m sendvae_cli|\$\(which sendvae\))\s")

# Inputs the documented lines name, made empty in a scratch folder: the commands check they
# exist before calling their pipelines, which the probe replaces.
INPUTS = {"files": ["runs/in1k-send-vae.h5", "latents.h5", "feats.h5"],
          "folders": ["runs/sit-xl1", "runs/sit", "runs/vae/export", "runs/send-vae/export"]}


def torchrun_lines() -> list[tuple[str, int, list[str]]]:
    """(where, world size, sendvae arguments) of every `torchrun ... sendvae CMD ...` the docs show."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        lines = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
        lines += INLINE.findall(text)
        for line in lines:
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if not line.startswith("torchrun ") or not PROGRAM.search(line):
                continue
            launcher, command = PROGRAM.split(line, maxsplit=1)
            args = shlex.split(launcher)
            counts = [args[args.index(flag) + 1] for flag in ("--nnodes", "--nproc-per-node") if flag in args]
            if "..." in command or not all(c.isdigit() for c in counts):  # a pattern (`-n G ... ARGS`), not a line
                continue
            world = 1
            for count in counts:
                world *= int(count)
            found.append((f"{doc.name}: {line[:90]}", world, shlex.split(command)))
    return found


LINES = torchrun_lines()


def test_the_docs_show_torchrun_lines_for_each_stage():
    commands = {args[0] for _, _, args in LINES}
    assert {"train-vae", "cache-latents", "train-sit", "sample", "recon", "extract"} <= commands, commands
    assert {world for _, world, _ in LINES} >= {8, 32}


@pytest.mark.parametrize("where,world,args", LINES, ids=[w for w, _, _ in LINES])
def test_each_documented_torchrun_line_parses_at_its_world_size(where, world, args, tmp_path, monkeypatch):
    """What rank 0 of that many processes does with the line up to its pipeline (and, for the
    trainers, the batch split the loop makes first): no error."""
    from sendvae_cli.train.loop import split_batch

    for name in INPUTS["files"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    for name in INPUTS["folders"]:
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", "0")
    seen = []

    def probe(*a, **k):
        seen.append(a)

    import sendvae_cli.caches.extract as extract
    import sendvae_cli.caches.latents as latents
    import sendvae_cli.cli.caches as cli_caches
    import sendvae_cli.eval.fid as fid
    import sendvae_cli.eval.probe as probe_module
    import sendvae_cli.eval.recon as recon
    import sendvae_cli.generate.run as sample
    import sendvae_cli.train.sit_trainer as sit_trainer
    import sendvae_cli.train.vae_trainer as vae_trainer

    monkeypatch.setattr(cli_caches, "open_data", lambda *a, **k: None)
    for module, name in ((extract, "extract"), (latents, "cache_latents"), (sit_trainer, "train_sit"),
                         (vae_trainer, "train_vae"), (sample, "run_sample"), (recon, "run_recon"),
                         (probe_module, "run_probe"), (fid, "evaluate")):
        monkeypatch.setattr(module, name, probe)
    monkeypatch.setattr(fid, "render_table", lambda result: "")
    proc = invoke(*args)
    assert proc.returncode == 0, f"{where}\n{proc.stdout}{proc.stderr}"
    assert seen, f"{where}: the pipeline was not reached"
    if args[0] in ("train-vae", "train-sit"):
        cfg = seen[0][0]
        split = split_batch(cfg.batch_size, world, cfg.micro_batch, auto=cfg.micro_batch_auto)
        assert split.world * split.micro_batch * split.accumulation == cfg.batch_size


# -- the batch split -----------------------------------------------------------------------------
def test_split_batch_keeps_the_global_batch_and_the_preset_micro_batch_as_a_ceiling():
    from sendvae_cli.errors import UserError
    from sendvae_cli.train.loop import split_batch

    paper_sit = [(w, split_batch(256, w, 64, auto=True)) for w in (1, 2, 4, 8, 16, 32)]
    assert [(w, s.micro_batch, s.accumulation) for w, s in paper_sit] == \
        [(1, 64, 4), (2, 64, 2), (4, 64, 1), (8, 32, 1), (16, 16, 1), (32, 8, 1)]
    assert [split_batch(1024, w, 32, auto=True).accumulation for w in (1, 8, 32)] == [32, 4, 1]
    assert split_batch(32, 2, 32, auto=True).micro_batch == 16 and split_batch(16, 2, 16, auto=True).micro_batch == 8
    assert split_batch(16, 1, 16, auto=True).note is None  # nothing chosen: nothing said
    assert "micro-batch 8 per process (x 2 process(es) x 1 accumulated = global batch 16" in \
        split_batch(16, 2, 16, auto=True).note
    # a resumed run keeps its micro-batch when it fits the new world size, and says which fit otherwise
    assert split_batch(32, 1, 32, auto=True, recorded=16) == split_batch(32, 1, 16, auto=False).__class__(
        32, 1, 16, 2, split_batch(32, 1, 32, auto=True, recorded=16).note)
    with pytest.raises(UserError, match="started with micro-batch 32, .* resume it on 1 process"):
        split_batch(32, 2, 32, auto=True, recorded=32)
    with pytest.raises(UserError, match="--batch-size 30: the global batch is split evenly .* not a multiple of 4"):
        split_batch(30, 4, 8, auto=True)
    with pytest.raises(UserError, match="--micro-batch 32 x 2 process.*leave --micro-batch out"):
        split_batch(32, 2, 32, auto=False)


# -- real runs on 2 processes --------------------------------------------------------------------
def torchrun(*args, nproc=2, timeout=600, check=True, env=None):
    """`torchrun --standalone --nproc-per-node N -m sendvae_cli ARGS` (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "sendvae_cli", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    out = tmp_path_factory.mktemp("latents") / "latents.h5"
    run_cli("cache-latents", "shapes", "--vae", "tiny", "--random-weights", "--num-images", "64", "--resolution", "64",
            "--workers", "0", "--quiet", "--out", out)
    return out


def test_tiny_presets_run_on_two_processes_without_micro_batch(latents, tmp_path):
    sit = tmp_path / "sit"
    proc = torchrun("train-sit", latents, "--preset", "tiny", "--images", "shapes", "--random-weights", "--steps", "2",
                    "--checkpoint-every", "2", "--sample-every", "2", "--preview-count", "4", "--preview-steps", "2",
                    "--workers", "0", "--out", sit)
    config = json.loads((sit / "config.json").read_text())
    assert (config["batch_size"], config["micro_batch"], config["accumulation"], config["world_size"]) == (32, 16, 1, 2)
    assert proc.stderr.count("micro-batch 16 per process") == 1  # said once, by rank 0
    assert "FutureWarning" not in proc.stderr
    vae = tmp_path / "vae"
    torchrun("train-vae", "shapes", "--preset", "tiny", "--random-weights", "--num-images", "64", "--steps", "2",
             "--checkpoint-every", "2", "--sample-every", "2", "--stats-images", "32", "--workers", "0", "--quiet",
             "--out", vae)
    config = json.loads((vae / "config.json").read_text())
    assert (config["batch_size"], config["micro_batch"], config["accumulation"], config["world_size"]) == (16, 8, 1, 2)
    assert (vae / "export" / "vae.json").is_file()
