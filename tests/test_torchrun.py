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
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    assert {"train-vae", "cache-latents", "train-sit", "sample", "fid", "recon", "extract"} <= commands, commands
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
    monkeypatch.setattr(fid, "fid_table", lambda result: "")
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
    assert split_batch(8, 2, 8, auto=True).micro_batch == 4
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
    from sendvae_cli.train import sit_config, vae_config
    from sendvae_cli.train.loop import split_batch

    def expected(presets):  # (global batch, micro-batch, accumulation, world size) on 2 processes
        batch, most = presets["tiny"]["batch_size"], presets["tiny"]["micro_batch"]
        split = split_batch(batch, 2, most, auto=True)
        return batch, split.micro_batch, split.accumulation, 2

    config = json.loads((sit / "config.json").read_text())
    assert (config["batch_size"], config["micro_batch"], config["accumulation"], config["world_size"]) == \
        expected(sit_config.PRESETS)
    assert proc.stderr.count(f"micro-batch {config['micro_batch']} per process") == 1  # said once, by rank 0
    assert "FutureWarning" not in proc.stderr
    vae = tmp_path / "vae"
    torchrun("train-vae", "shapes", "--preset", "tiny", "--random-weights", "--num-images", "64", "--steps", "2",
             "--checkpoint-every", "2", "--sample-every", "2", "--stats-images", "32", "--workers", "0", "--quiet",
             "--out", vae)
    config = json.loads((vae / "config.json").read_text())
    assert (config["batch_size"], config["micro_batch"], config["accumulation"], config["world_size"]) == \
        expected(vae_config.PRESETS)
    assert (vae / "export" / "vae.json").is_file()


# -- sample's start-up ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sit(tmp_path_factory):
    from test_sample import tiny_sit, tiny_vae

    root = tmp_path_factory.mktemp("models")
    return tiny_sit(root / "sit", tiny_vae(root / "vae", seed=0))


SAMPLE = ["-n", "12", "--steps", "2", "--batch-size", "4", "--quiet"]


def test_sample_refuses_a_foreign_out_once(sit, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    proc = torchrun("sample", sit, "--out", foreign, *SAMPLE, check=False)
    assert proc.returncode == 1  # torchrun's code for any failed worker (docs/torchrun.md)
    assert re.search(r"exitcode\s+: 2 \(pid", proc.stderr)  # the workers' own
    ours = our_lines(proc.stderr)
    assert ours == [f"error: --out {foreign}: exists and is not a sample folder (no sample.json); choose another --out"]
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


SLOW_MANIFEST = """
import os, sys, time
from sendvae_cli.generate.folder import SampleFolder

written, checked = SampleFolder.write_manifest, SampleFolder.check

def slowly(self, manifest):  # a slow file system: the manifest is being written a while
    self.out.mkdir(parents=True, exist_ok=True)
    partial = self.out / "sample.json.partial"
    partial.write_text("{")
    time.sleep(1.5)
    partial.unlink()
    written(self, manifest)

def late(self, settings):  # rank 1 reaches its check a moment after rank 0
    if os.environ["RANK"] != "0":
        time.sleep(0.5)
    return checked(self, settings)

SampleFolder.write_manifest, SampleFolder.check = slowly, late
from sendvae_cli.cli import main
sys.argv[0] = "sendvae"
main()
"""


def test_sample_ranks_look_at_out_only_once_rank_0_made_it(sit, tmp_path):
    """The start-up race, made certain: rank 0 takes 1.5 s to write the manifest into a fresh OUT,
    and rank 1 comes to OUT half a second after rank 0."""
    script = tmp_path / "slow_manifest.py"
    script.write_text(SLOW_MANIFEST)
    out = tmp_path / "fresh"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           "sample", str(sit), "--out", str(out), *SAMPLE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, our_lines(proc.stderr) or proc.stderr[-3000:]
    assert (out / "samples.npz").is_file()


@pytest.mark.slow
def test_twenty_fresh_two_process_sample_starts_in_a_row_succeed(sit, tmp_path):
    """Rank 0 makes OUT a sample folder before the others look at it (they used to see it half made)."""
    failures = []
    for i in range(20):
        out = tmp_path / f"start-{i:02d}"
        proc = torchrun("sample", sit, "--out", out, *SAMPLE, check=False)
        if proc.returncode != 0:
            failures.append(f"start {i}: {our_lines(proc.stderr) or proc.stderr[-500:]}")
    assert not failures, "\n".join(failures)
    first = (tmp_path / "start-00" / "samples.npz").read_bytes()
    assert all((tmp_path / f"start-{i:02d}" / "samples.npz").read_bytes() == first for i in range(20))


# -- one outcome per job -------------------------------------------------------------------------
LAUNCHER = re.compile(r"^([WEI]\d{4} |Traceback|  |torch\.distributed|=+$|-+$|\[\d+\]:|Failures:|Root Cause|"
                      r"\S+ FAILED$|\*+$|Setting OMP_NUM_THREADS)")


def our_lines(stderr: str) -> list[str]:
    """The lines our processes printed (the launcher's log lines and its report left out)."""
    return [line for line in stderr.splitlines() if line.strip() and not LAUNCHER.match(line)]


def start_training(latents, out, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sendvae_cli",
           "train-sit", str(latents), "--preset", "tiny", "--proj-weight", "0", "--batch-size", "8", "--steps", "100000",
           "--checkpoint-every", "20", "--workers", "0", "--quiet", "--out", str(out), *extra]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "latest").exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert launcher.poll() is None, launcher.communicate()[1][-3000:]
    return launcher


def workers_of(launcher) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes."""
    found = {}
    for pid in map(int, subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                       text=True).stdout.split()):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
        if ranks:
            found[ranks[0]] = pid
    return found


def test_a_killed_worker_is_one_line_naming_it_and_the_step_to_resume_from(latents, tmp_path):
    out = tmp_path / "killed"
    launcher = start_training(latents, out)
    os.kill(workers_of(launcher)[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    latest = int((out / "checkpoints" / "latest").read_text().split("-")[1])
    assert our_lines(stderr) == [f"error: rank 1 of 2 ended without a word (killed, out of memory, or a crash); the "
                                 f"other processes stopped with it. Rerun the same command to resume from step "
                                 f"{latest}"], stderr
    assert "GLHF" not in stderr and "Connection closed" not in stderr
    assert re.search(r"exitcode\s+: 1 \(pid", stderr)  # the survivor's code, in the launcher's report


def test_sigterm_to_every_process_stops_once_saves_and_resumes(latents, tmp_path):
    """As a scheduler stops a job: SIGTERM to the launcher and to every worker (the launcher passes
    its own on too, so each worker gets two)."""
    out = tmp_path / "stopped"
    launcher = start_training(latents, out)
    for pid in [launcher.pid, *workers_of(launcher).values()]:
        os.kill(pid, signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 1  # torchrun's own code when it is signalled (docs/reproduce.md)
    lines = our_lines(stderr)
    assert len(lines) == 1 and re.fullmatch(r"stopped: train-sit: SIGTERM received; stopped at step (\d+) of 100000, "
                                            r"saved as .*step-0*\1\. Rerun the same command to continue", lines[0]), stderr
    step = int(re.search(r"at step (\d+)", lines[0]).group(1))
    assert (out / "checkpoints" / "latest").read_text() == f"step-{step:06d}"


def test_outcome_decides_who_says_what(tmp_path, monkeypatch):
    """The protocol over a real store, each rank played in turn by this process."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    from sendvae_cli import outcome

    server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setattr(outcome, "ERROR_WAIT_S", 0.3)
    monkeypatch.setattr(outcome, "LOST_WAIT_S", 0.3)
    monkeypatch.setattr(outcome, "STOP_WAIT_S", 0.3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def as_rank(rank, world, run):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", run)
        monkeypatch.setattr(outcome, "_store", None)
        monkeypatch.setattr(signal, "signal", lambda *a: None)  # settle ignores SIGTERM: not in a test

    # the same error on every rank: rank 0 says it, the others keep quiet
    as_rank(0, 2, "same")
    assert outcome.settle("error", "--out x: bad", 2) == outcome.Verdict("--out x: bad", "error", 2)
    as_rank(1, 2, "same")
    assert outcome.settle("error", "--out x: bad", 2).line is None
    # an error only rank 1 meets: said by rank 1, named
    as_rank(1, 2, "alone")
    assert outcome.settle("error", "disk full", 2).line == "rank 1 of 2: disk full"
    # rank 1 killed: rank 0's failed collective becomes the line that names it, with the resume note
    as_rank(1, 2, "killed")
    outcome._post("pid/1", f"{socket.gethostname()} {dead.pid}")
    as_rank(0, 2, "killed")
    outcome.set_resume("rerun the same command to resume from step 40")
    verdict = outcome.settle("lost", "Connection closed by peer", 1)
    assert verdict == outcome.Verdict("rank 1 of 2 ended without a word (killed, out of memory, or a crash); the "
                                      "other processes stopped with it. Rerun the same command to resume from step 40",
                                      "error", 1)
    # a rank that stopped on its own said so: the survivors' failed collectives add nothing
    as_rank(1, 3, "one-stopped")
    assert outcome.settle("stopped", "SIGTERM received", 143).line is not None
    as_rank(0, 3, "one-stopped")
    assert outcome.settle("lost", "Connection reset by peer", 1) == outcome.Verdict(None, "stopped", 143)
    outcome.set_resume(outcome.DEFAULT_RESUME)


# -- fid on several processes --------------------------------------------------------------------
def test_fid_on_two_processes_gives_the_one_process_figures(tmp_path):
    """Batch k on rank k mod 2, rank 0 updating the statistics in batch order: the same figures,
    to the last bit at one thread per process (the result files are the same but for their names). 10 samples in
    batches of 4 leave rank 1 without a batch in the last round; the reference is computed by
    both processes and cached by rank 0."""
    import numpy as np
    from PIL import Image

    from sendvae_cli.data.shapes import ShapesSource
    from sendvae_cli.eval.inception import random_inception_weights

    weights = random_inception_weights(tmp_path / "inception.pth", seed=0)
    for name, count, seed in (("samples", 10, 0), ("ref", 5, 1)):
        source = ShapesSource(count, 32, seed=seed)
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(source[i][0].permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:03d}.png")
    args = ["fid", tmp_path / "samples", "--ref", tmp_path / "ref", "--inception-weights", weights, "--batch-size", "4",
            "--workers", "0", "--device", "cpu", "--quiet"]
    run_cli(*args, "--json", tmp_path / "one.json", env={"SENDVAE_CACHE": str(tmp_path / "cache-one")})
    two = torchrun(*args, "--json", tmp_path / "two.json", env={"SENDVAE_CACHE": str(tmp_path / "cache-two")})
    assert two.stdout.count("sendvae fid (ADM suite)") == 1  # rank 0's table only
    one, two_ = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["reference"]["from"]["images"] == two_["reference"]["from"]["images"] == "computed"
    assert len(list((tmp_path / "cache-two" / "fid").glob("*.npz"))) == 1  # written once, by rank 0
    assert one["metrics"] == two_["metrics"]
    assert all(np.isfinite(v) for v in one["metrics"].values())
    assert {**one, "json": None} == {**two_, "json": None}  # the whole result file but its own name
