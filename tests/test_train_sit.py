"""`sendvae train-sit` end to end on CPU: a tiny SiT with REPA against a random-weight teacher on a
small `shapes` latent cache made by `cache-latents`, in real processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke, one_line_error, run_cli

RES = "64"


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A flipped latent cache of 64 shapes from a random tiny VAE, and teacher tokens of the same images."""
    root = tmp_path_factory.mktemp("sitdata")
    latents = root / "latents.h5"
    run_cli("cache-latents", "shapes", "--vae", "tiny", "--random-weights", "--num-images", "64", "--resolution", RES,
            "--flip", "--workers", "0", "--quiet", "--out", latents)
    feats = root / "feats.h5"
    run_cli("extract", "shapes", "--teacher", "dinov2-s", "--random-weights", "--num-images", "64",
            "--resolution", RES, "--workers", "0", "--quiet", "--out", feats)
    return {"latents": latents, "feats": feats, "root": root}


def tiny(latents, *extra):
    return [str(latents), "--images", "shapes", "--teacher", "dinov2-s", "--random-weights", "--preset", "tiny",
            "--batch-size", "8", "--steps", "12", "--checkpoint-every", "4", "--sample-every", "6",
            "--log-every", "2", "--workers", "1", "--preview-count", "4", "--preview-steps", "4", "--quiet", *extra]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(caches, tmp_path_factory):
    out = tmp_path_factory.mktemp("sit") / "ref"
    run_cli("train-sit", *tiny(caches["latents"]), "--out", out)
    return out


def test_run_folder_holds_config_metrics_grids_checkpoints_and_export(reference):
    config = json.loads((reference / "config.json").read_text())
    assert config["model"] == "SiT-tiny/1" and config["total_steps"] == 12
    assert config["lr"] == 3e-3 and config["time_schedule"] == "lognormal" and config["time_mean"] == 0.5  # tiny's
    assert config["flip"] is True and config["conditional"] is True and config["num_classes"] == 5
    assert config["attention_backend"] in ("sdpa", "xformers")
    assert (reference / "checkpoints" / "latest").read_text() == "step-000012"
    assert sorted(p.name for p in (reference / "samples").iterdir()) == ["step-000006.png", "step-000012.png"]
    rows = metrics(reference)
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert {"loss", "velocity", "repa", "grad_norm", "images_per_s"} <= set(rows[0])
    meta = json.loads((reference / "export" / "generator.json").read_text())
    assert meta["format"] == "sendvae-generator" and meta["family"] == "SiT"
    from sendvae_cli.generators.export import load_generator_export

    loaded = load_generator_export(reference)  # a run folder reads as its export
    assert loaded.num_classes == 5 and loaded.latent_std.shape == (8,)
    weights = load_file(str(reference / "checkpoints" / "step-000012" / "weights.safetensors"))
    ema = {k[len("ema."):]: v for k, v in weights.items() if k.startswith("ema.")}
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in state)  # the export holds the EMA weights


def test_loss_goes_down(caches, tmp_path):
    out = tmp_path / "long"
    run_cli("train-sit", *tiny(caches["latents"], "--steps", "60", "--lr", "1e-3", "--log-every", "10",
                               "--checkpoint-every", "60", "--sample-every", "60"), "--out", out)
    rows = metrics(out)
    first, last = rows[0], rows[-1]
    assert last["loss"] < 0.97 * first["loss"], rows
    assert last["repa"] < first["repa"] - 0.1, rows  # alignment improves (the negative cosine falls)


@pytest.mark.slow
def test_velocity_loss_leaves_its_plateau(caches, tmp_path):
    """The velocity MSE starts at 2 (zero-initialised output) and stays there until the adaLN gates
    open; on this tiny model and batch that takes ~200 steps."""
    out = tmp_path / "longer"
    run_cli("train-sit", *tiny(caches["latents"], "--steps", "400", "--lr", "1e-3", "--log-every", "50",
                               "--checkpoint-every", "400", "--sample-every", "400"), "--out", out)
    rows = metrics(out)
    assert abs(rows[0]["velocity"] - 2.0) < 0.1 and rows[-1]["velocity"] < 1.8, rows


def test_kill_9_and_rerun_is_bit_identical(caches, reference, tmp_path):
    out = tmp_path / "killed"
    latest = out / "checkpoints" / "latest"
    proc = subprocess.Popen([sys.executable, "-m", "sendvae_cli", "train-sit", *tiny(caches["latents"]), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text()
    assert killed_at in ("step-000004", "step-000008"), killed_at
    run_cli("train-sit", *tiny(caches["latents"]), "--out", out)
    for name in ("step-000012",):
        a = load_file(str(reference / "checkpoints" / name / "weights.safetensors"))
        b = load_file(str(out / "checkpoints" / name / "weights.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    def losses(run):
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in metrics(run)]

    assert losses(out) == losses(reference)
    a = load_file(str(reference / "export" / "generator.safetensors"))
    b = load_file(str(out / "export" / "generator.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_of_a_finished_run_changes_nothing(caches, reference):
    before = (reference / "export" / "generator.safetensors").read_bytes()
    proc = run_cli("train-sit", *[a for a in tiny(caches["latents"]) if a != "--quiet"], "--out", reference)
    assert "already complete" in proc.stderr
    assert (reference / "export" / "generator.safetensors").read_bytes() == before


def test_teacher_features_cache_trains_without_flips(caches, tmp_path):
    out = tmp_path / "feats"
    args = [a for a in tiny(caches["latents"], "--steps", "2") if a not in ("--images", "shapes")]
    proc = run_cli("train-sit", *args, "--teacher-features", caches["feats"], "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["flip"] is False  # extract stores no tokens of flipped images
    assert (out / "export" / "generator.safetensors").exists(), proc.stderr


def test_teacher_tokens_are_read_with_pread_and_match_h5py(caches, tmp_path):
    import dataclasses

    import h5py
    import numpy as np

    from sendvae_cli.caches.h5rows import row_offsets
    from sendvae_cli.train.sit_data import TokenTargets

    fast = TokenTargets.open(caches["feats"], None, 64, None)
    assert fast.offsets is not None  # extract's merged cache: rows of one chunk, no filters
    slow = dataclasses.replace(fast, offsets=None)
    rows, views = [5, 0, 63, 5, 17], [0] * 5
    assert np.array_equal(fast.read(rows, views), slow.read(rows, views))
    with h5py.File(caches["feats"], "r") as f:
        assert np.array_equal(fast.read([3], [0])[0], f["tokens"][3])
    # a layout pread cannot serve (compressed chunks) falls back to h5py
    with h5py.File(tmp_path / "gz.h5", "w") as f:
        f.create_dataset("tokens", data=np.ones((4, 2, 3), "<f2"), chunks=(1, 2, 3), compression="gzip")
        assert row_offsets(f, "tokens") is None


def test_no_repa_needs_no_teacher_and_trains_unconditionally(caches, tmp_path):
    out = tmp_path / "plain"
    args = [a for a in tiny(caches["latents"], "--steps", "2") if a not in ("--images", "shapes")]
    run_cli("train-sit", *args, "--proj-weight", "0", "--num-classes", "5", "--out", out)
    assert "repa" not in metrics(out)[0]
    assert json.loads((out / "config.json").read_text())["proj_weight"] == 0


def test_torchrun_two_processes_train_like_one_with_accumulation(caches, tmp_path):
    common = tiny(caches["latents"], "--steps", "3", "--micro-batch", "4", "--checkpoint-every", "3",
                  "--sample-every", "3")
    single = tmp_path / "single"
    run_cli("train-sit", *common, "--out", single)
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sendvae_cli", "train-sit", *common, "--out", str(ddp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
    assert json.loads((single / "config.json").read_text())["accumulation"] == 2
    a = load_file(str(single / "checkpoints" / "step-000003" / "weights.safetensors"))
    b = load_file(str(ddp / "checkpoints" / "step-000003" / "weights.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4


def test_bad_inputs_are_one_line_errors_and_overwrite_nothing(caches, reference, tmp_path):
    root = caches["root"]
    latents = caches["latents"]
    untouched = {p: p.read_bytes() for p in (reference / "config.json", reference / "export" / "generator.json")}
    # Teacher tokens on another grid than the SiT's: names the patch size that fits.
    proc = invoke("train-sit", *tiny(latents, "--model", "SiT-tiny/2"), "--out", tmp_path / "a")
    one_line_error(proc, "teacher tokens form a 4x4 grid", "SiT-tiny/2 sees 2x2", "patch size 1 fits")
    assert not (tmp_path / "a" / "checkpoints").exists()
    # Images of another kind than the cache's (a folder of other images for a shapes cache).
    from PIL import Image

    folder = tmp_path / "pictures" / "red"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (200, 10 * i, 0)).save(folder / f"{i}.png")
    args = tiny(latents)
    args[args.index("--images") + 1] = str(tmp_path / "pictures")
    proc = invoke("train-sit", *args, "--out", tmp_path / "b")
    one_line_error(proc, "--images", "holds folder images, the latent cache was made from shapes images")
    # Rows missing from a feature cache (extracted from fewer images).
    few = root / "few.h5"
    run_cli("extract", "shapes", "--teacher", "dinov2-s", "--random-weights", "--num-images", "16",
            "--resolution", RES, "--workers", "0", "--quiet", "--out", few)
    args = [a for a in tiny(latents) if a not in ("--images", "shapes")]
    proc = invoke("train-sit", *args, "--teacher-features", few, "--out", tmp_path / "c")
    one_line_error(proc, "--teacher-features", "48 of the 64 latent rows are missing")
    # A VAE that did not write the cache.
    from sendvae_cli.vae.autoencoder import AutoencoderKL
    from sendvae_cli.vae.export import export_vae

    torch.manual_seed(11)
    export_vae(AutoencoderKL("tiny-f16d8"), tmp_path / "stranger")
    proc = invoke("train-sit", *tiny(latents), "--vae", tmp_path / "stranger", "--out", tmp_path / "d")
    one_line_error(proc, "written by another VAE")
    # The run's cache rewritten by another VAE: the run refuses to continue, nothing is overwritten.
    rewritten = root / "rewritten.h5"
    run_cli("cache-latents", "shapes", "--vae", "tiny", "--random-weights", "--seed", "5", "--num-images", "64",
            "--resolution", RES, "--flip", "--workers", "0", "--quiet", "--out", rewritten)
    proc = invoke("train-sit", *tiny(rewritten), "--out", reference)
    one_line_error(proc, "written by another VAE", "than the one run")
    assert all(p.read_bytes() == b for p, b in untouched.items())
    # REPA without a source of teacher tokens.
    proc = invoke("train-sit", *args, "--out", tmp_path / "e")
    one_line_error(proc, "--teacher-features", "--images", "--proj-weight 0")
    # Centring flow times that are not lognormal; a beta2 outside [0, 1).
    proc = invoke("train-sit", *tiny(latents), "--time-schedule", "uniform", "--time-mean", "1",
                  "--out", tmp_path / "f")
    one_line_error(proc, "--time-mean 1.0", "uniform", "--time-schedule lognormal")
    proc = invoke("train-sit", *tiny(latents), "--beta2", "1.5", "--out", tmp_path / "g")
    one_line_error(proc, "--beta2 1.5", "[0, 1)")
    assert not (tmp_path / "f").exists() and not (tmp_path / "g").exists()


def test_compile_compiles_the_entry_point_the_step_calls(monkeypatch):
    """`--compile`: with REPA on, the step calls forward_with_projections, which a compiled module
    does not compile; both entry points go through torch.compile and the step calls the results."""
    from sendvae_cli.generators.sit import build_sit
    from sendvae_cli.train.sit_data import LatentNormalizer
    from sendvae_cli.train.sit_trainer import SiTObjective

    compiled = []

    def fake_compile(fn):
        def run(*args, **kwargs):
            compiled.append(name)
            return fn(*args, **kwargs)

        name = getattr(fn, "__name__", type(fn).__name__)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = build_sit("SiT-tiny/2", input_size=8, in_channels=4, num_classes=3, projector_dims=[16])
    for proj_weight, called in ((0.5, "forward_with_projections"), (0.0, "SiT")):
        objective = SiTObjective(model, LatentNormalizer([0.0] * 4, [1.0] * 4), proj_weight, "uniform", 0.1, True)
        objective.compile_model()
        compiled.clear()
        objective(torch.randn(2, 4, 8, 8), torch.ones(2, 4, 8, 8), torch.tensor([0, 2]), torch.randn(2, 16, 16),
                  torch.Generator().manual_seed(0), "fp32")
        assert compiled == [called]
