"""`sendvae sample` end to end: a tiny SiT export and a tiny VAE export, real processes, kill -9, torchrun."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import invoke, one_line_error, run_cli

# 50 samples, SDE with guidance on part of the grid: every code path of a full run.
RUN = ["-n", "50", "--mode", "sde", "--steps", "4", "--cfg", "2.0", "--guidance-high", "0.7", "--precision", "fp64",
       "--quiet"]


def tiny_vae(folder, seed):
    from sendvae_cli.vae.autoencoder import VAE_CONFIGS
    from sendvae_cli.vae.export import export_vae
    from sendvae_cli.vae.formats import build_vae

    torch.manual_seed(seed)
    return export_vae(build_vae(VAE_CONFIGS["tiny-f16d8"]), folder)


def tiny_sit(folder, vae_folder, num_classes=10):
    """A SiT on the tiny VAE's 8 x 2 x 2 latents (32 px images), every weight non-zero."""
    from sendvae_cli.generators.export import save_generator_export
    from sendvae_cli.generators.sit import SiT
    from sendvae_cli.vae.export import load_exported
    from sendvae_cli.provenance import weights_sha256

    torch.manual_seed(0)
    model = SiT(input_size=2, in_channels=8, patch_size=1, depth=2, width=32, heads=2, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (p[0].numel() ** -0.5 if p.ndim >= 2 else 0.1))
    vae = load_exported(vae_folder)
    return save_generator_export(folder, model, generator="SiT-tiny/1",
                                 latent_stats=([0.1] * 8, [0.8] * 8),
                                 vae={"sha256": weights_sha256(vae.model), "source": str(vae_folder)})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    vae = tiny_vae(root / "vae", seed=0)
    return {"root": root, "vae": vae, "other_vae": tiny_vae(root / "other-vae", seed=1),
            "sit": tiny_sit(root / "sit", vae)}


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "samples"
    ok("sample", models["sit"], "--out", out, "--batch-size", "7", *RUN)
    return out


def ok(*args):
    """`sendvae ARGS` in this process (small runs: no interpreter start-up)."""
    proc = invoke(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def arrays(out):
    with np.load(out / "samples.npz") as data:
        return data["arr_0"], data["arr_1"]


# -- the outputs ------------------------------------------------------------------------------
def test_folder_npz_manifest_and_balanced_labels(reference, models):
    images, labels = arrays(reference)
    assert images.dtype == np.uint8 and images.shape == (50, 32, 32, 3)
    assert np.bincount(labels, minlength=10).tolist() == [5] * 10
    pngs = sorted(p.relative_to(reference / "images").as_posix() for p in (reference / "images").rglob("*.png"))
    assert pngs == [f"000000/{i:06d}.png" for i in range(50)]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(reference / "images/000000/000031.png")), images[31])
    manifest = json.loads((reference / "sample.json").read_text())
    assert manifest["status"] == "complete" and manifest["nfe"] == 4 and manifest["sampler"] == "sde-euler-maruyama"
    s = manifest["settings"]
    assert (s["cfg_scale"], s["guidance_low"], s["guidance_high"], s["labels"], s["seed"], s["count"]) == \
        (2.0, 0.0, 0.7, "balanced", 0, 50)
    assert manifest["cfg"]["null_class"] == 10 and manifest["cfg"]["channels"] == "all"
    assert len(s["model_sha256"]) == 64 and len(s["vae_sha256"]) == 64
    runs = [json.loads(line) for line in (reference / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["seconds"] > 0 and runs[0]["batch_size"] == 7
    text = (reference / "sample.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert "seconds" not in text  # timing lives in runs.jsonl: the manifest is the same bytes every time


def test_batch_size_does_not_change_the_samples(reference, models, tmp_path):
    ok("sample", models["sit"], "--out", tmp_path / "b16", "--batch-size", "16", *RUN)
    assert (tmp_path / "b16" / "samples.npz").read_bytes() == (reference / "samples.npz").read_bytes()
    assert (tmp_path / "b16" / "sample.json").read_bytes() == (reference / "sample.json").read_bytes()


def test_torchrun_two_ranks_give_the_same_samples(reference, models, tmp_path):
    out = tmp_path / "ranks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sendvae_cli", "sample", str(models["sit"]), "--out", str(out), "--batch-size", "16", *RUN]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "samples.npz").read_bytes() == (reference / "samples.npz").read_bytes()
    assert json.loads((out / "runs.jsonl").read_text())["world_size"] == 2
    assert (out / "sample.json").read_bytes() == (reference / "sample.json").read_bytes()


def test_kill_9_then_rerun_gives_the_same_files(reference, models, tmp_path):
    out = tmp_path / "killed"
    shard = out / "images" / "000000"
    interrupted = False
    for wait_for in (5, 2, 15):
        proc = subprocess.Popen([sys.executable, "-m", "sendvae_cli", "sample", str(models["sit"]), "--out", str(out),
                                 "--batch-size", "1", *RUN], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and \
                len(list(shard.glob("*.png")) if shard.is_dir() else []) < wait_for:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = len(list(shard.glob("*.png"))) if shard.is_dir() else 0
        if 0 < done < 50 and not (out / "samples.npz").exists():
            interrupted = True
            break
    assert interrupted, "could not kill the run mid-way"
    run_cli("sample", models["sit"], "--out", out, "--batch-size", "16", *RUN)
    assert (out / "samples.npz").read_bytes() == (reference / "samples.npz").read_bytes()
    assert (out / "sample.json").read_bytes() == (reference / "sample.json").read_bytes()
    for i in (0, 17, 49):
        assert (out / f"images/000000/{i:06d}.png").read_bytes() == (reference / f"images/000000/{i:06d}.png").read_bytes()
    assert not list(out.rglob("*.tmp*"))


def test_sigterm_stops_with_one_line_and_the_rerun_gives_the_same_files(reference, models, tmp_path):
    out = tmp_path / "stopped"
    shard = out / "images" / "000000"
    proc = subprocess.Popen([sys.executable, "-m", "sendvae_cli", "sample", str(models["sit"]), "--out", str(out),
                             "--batch-size", "1", *RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and \
            len(list(shard.glob("*.png")) if shard.is_dir() else []) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped: --out" in stderr and "Rerun the same command to continue" in stderr
    assert "Traceback" not in stderr and not (out / "samples.npz").exists()
    run_cli("sample", models["sit"], "--out", out, "--batch-size", "16", *RUN)
    assert (out / "samples.npz").read_bytes() == (reference / "samples.npz").read_bytes()
    assert (out / "sample.json").read_bytes() == (reference / "sample.json").read_bytes()


def test_finished_output_is_not_redone(reference, models):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()}
    proc = invoke("sample", models["sit"], "--out", reference, "--batch-size", "3", *RUN[:-1])
    assert proc.returncode == 0 and "already complete" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()} == before


def test_class_random_labels_and_grid(models, tmp_path):
    ok("sample", models["sit"], "--out", tmp_path / "c", "-n", "6", "--class", "3", "--steps", "3", "--quiet")
    assert arrays(tmp_path / "c")[1].tolist() == [3] * 6
    ok("sample", models["sit"], "--out", tmp_path / "r", "-n", "30", "--labels", "random", "--steps", "3",
            "--heun", "--quiet")
    labels = arrays(tmp_path / "r")[1]
    assert len(labels) == 30 and np.bincount(labels, minlength=10).tolist() != [3] * 10
    ok("sample", models["sit"], "--out", tmp_path / "g", "--grid", "3x4", "--steps", "2", "--quiet")
    from PIL import Image

    grid = Image.open(tmp_path / "g" / "grid.png")
    assert grid.height == 3 * 34 + 2 and grid.width > 4 * 34
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["grid.png"]


def test_run_folder_and_paper_preset(models, tmp_path):
    """A train-sit run folder (its export/) as MODEL; --preset paper with explicit flags winning."""
    import shutil

    shutil.copytree(models["sit"], tmp_path / "run" / "export")
    ok("sample", tmp_path / "run", "--out", tmp_path / "p", "--preset", "paper", "-n", "3", "--steps", "2", "--quiet")
    manifest = json.loads((tmp_path / "p" / "sample.json").read_text())
    s = manifest["settings"]
    assert (s["mode"], s["steps"], s["cfg_scale"], s["guidance_low"], s["guidance_high"], s["count"]) == \
        ("sde", 2, 2.5, 0.0, 0.75, 3)
    assert manifest["nfe"] == 2 and manifest["model"]["model_path"] == str(tmp_path / "run")


def test_unconditional_generator_takes_no_labels(models, tmp_path):
    """A plugin generator without classes: no labels, no arr_1, guidance and --class refused."""
    from sendvae_cli.distributed import init
    from sendvae_cli.generate.pipeline import SampleSettings, SamplingModel, sample_to_folder
    from sendvae_cli.generate.run import check_labels
    from sendvae_cli.errors import UserError
    from sendvae_cli.vae.export import load_exported

    from sendvae_cli.generators.base import FlowGenerator

    class Unconditional(FlowGenerator):
        def __init__(self):
            super().__init__(input_size=2, in_channels=8, num_classes=0, arch={})
            self.conv = torch.nn.Conv2d(8, 8, 1)

        def forward(self, x, t, y):
            assert y is None
            return self.conv(x) * t.view(-1, 1, 1, 1)

    gen = SamplingModel(Unconditional(), 0, (8, 2, 2), torch.zeros(8), torch.ones(8),
                        load_exported(models["vae"]).model, {"model_sha256": "m", "vae_sha256": "v"})
    manifest = sample_to_folder(gen, SampleSettings(count=5, steps=2), tmp_path / "u", init("cpu"), batch_size=2,
                                show=False)
    assert manifest["settings"]["labels"] == "none" and manifest["cfg"]["null_class"] is None
    with np.load(tmp_path / "u" / "samples.npz") as data:
        assert data.files == ["arr_0"] and data["arr_0"].shape == (5, 32, 32, 3)
    with pytest.raises(UserError, match="unconditional"):
        check_labels(SampleSettings(count=5, cfg_scale=1.5), 0)
    with pytest.raises(UserError, match="--class 2: the model is unconditional"):
        check_labels(SampleSettings(count=5, class_id=2), 0)


def test_fid_readers_see_the_same_images_in_npz_and_folder(reference):
    """`sendvae fid` reads both: the same uint8 batches in the same order, hence the same features."""
    from sendvae_cli.eval.inputs import open_image_input

    npz, folder = open_image_input(reference / "samples.npz", "SAMPLES"), open_image_input(reference / "images", "SAMPLES")
    assert (npz.kind, npz.count, folder.count) == ("npz", 50, 50)
    for a, b in zip(npz.batches(16), folder.batches(16, workers=0), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_npz_and_png_folder_give_the_same_fid(reference, tmp_path, monkeypatch):
    from sendvae_cli.eval.inception import random_inception_weights

    monkeypatch.setenv("SENDVAE_CACHE", str(tmp_path / "cache"))
    weights = random_inception_weights(tmp_path / "inception.pth", seed=0)
    results = []
    for samples in (reference / "samples.npz", reference / "images"):
        out = tmp_path / f"fid-{samples.name}.json"
        run_cli("fid", samples, "--ref", reference / "images", "--num-samples", "12", "--inception-weights", weights,
                "--json", out, "--quiet")
        results.append(json.loads(out.read_text())["metrics"])
    assert results[0] == results[1] and results[0]["fid"] > 0


# -- REPA-E checkpoints -------------------------------------------------------------------------
def test_repae_checkpoint_with_vae_and_latent_stats(tmp_path):
    """A `.pt` in REPA-E's layout (latent statistics in bn.*) as MODEL, with --vae, and with --latent-stats."""
    from sendvae_cli.generators.export import export_repa_checkpoint
    from sendvae_cli.generators.sit import build_sit
    from sendvae_cli.vae.autoencoder import VAEConfig
    from sendvae_cli.vae.export import export_vae
    from sendvae_cli.vae.formats import build_vae

    torch.manual_seed(0)
    sit = build_sit("SiT-tiny/1", input_size=8, in_channels=4, num_classes=1000)
    with torch.no_grad():
        for p in sit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    checkpoint = export_repa_checkpoint(sit, tmp_path / "0000100.pt", latent_stats=([0.0] * 4, [0.5] * 4))
    config = VAEConfig(ch=16, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(), z_channels=4, embed_dim=4,
                       norm_groups=8)
    vae = export_vae(build_vae(config), tmp_path / "vae4")
    stats = tmp_path / "vae4-latents-stats.pt"
    torch.save({"latents_scale": torch.full((1, 4, 1, 1), 1 / 3), "latents_bias": torch.ones(1, 4, 1, 1)}, stats)

    common = ["--vae", vae, "-n", "4", "--steps", "3", "--cfg", "1.5", "--quiet"]
    ok("sample", checkpoint, "--out", tmp_path / "a", *common)
    ok("sample", checkpoint, "--latent-stats", stats, "--out", tmp_path / "b", *common)
    a = json.loads((tmp_path / "a" / "sample.json").read_text())
    b = json.loads((tmp_path / "b" / "sample.json").read_text())
    assert "bn" in a["model"]["model_latent_stats"] and b["model"]["model_latent_stats"] == str(stats)
    assert a["cfg"]["null_class"] == 1000
    assert arrays(tmp_path / "a")[0].shape == (4, 16, 16, 3)
    assert not np.array_equal(arrays(tmp_path / "a")[0], arrays(tmp_path / "b")[0])
    one_line_error(invoke("sample", checkpoint, "--out", tmp_path / "c", "-n", "4"), "MODEL", "--vae")
    one_line_error(invoke("sample", checkpoint, "--vae", vae, "--latent-stats", tmp_path / "none.pt",
                          "--out", tmp_path / "c"), "--latent-stats", "no such")
    assert not (tmp_path / "c").exists()


def test_repa_checkpoint_takes_the_statistics_beside_the_vae(tmp_path):
    """REPA's layout has no bn.*: the `<vae>-latents-stats.pt` beside a REPA-E VAE .pt beats the SD-VAE guess."""
    from sendvae_cli.generators.export import export_repa_checkpoint
    from sendvae_cli.generators.sit import build_sit
    from sendvae_cli.vae.autoencoder import VAEConfig
    from sendvae_cli.vae.formats import build_vae

    torch.manual_seed(0)
    checkpoint = export_repa_checkpoint(build_sit("SiT-tiny/1", input_size=8, in_channels=4, num_classes=1000),
                                        tmp_path / "repa.pt", flavour="repa")
    config = VAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(), z_channels=4, embed_dim=4)
    torch.save(build_vae(config).state_dict(), tmp_path / "vae.pt")
    torch.save({"latents_scale": torch.full((1, 4, 1, 1), 0.5), "latents_bias": torch.zeros(1, 4, 1, 1)},
               tmp_path / "vae-latents-stats.pt")
    ok("sample", checkpoint, "--vae", tmp_path / "vae.pt", "--out", tmp_path / "s", "-n", "2", "--steps", "2",
       "--quiet")
    manifest = json.loads((tmp_path / "s" / "sample.json").read_text())
    assert manifest["model"]["model_latent_stats"] == "beside the VAE weights"


# -- bad inputs: one line, nothing written or overwritten ----------------------------------------
def test_bad_inputs_are_one_line_and_touch_nothing(reference, models, tmp_path):
    out = tmp_path / "never"
    sit = models["sit"]
    one_line_error(invoke("sample", models["vae"], "--out", out), "is a VAE export", "--vae")
    from sendvae_cli.vae.export import load_exported

    vae_pt = tmp_path / "vavae.pt"
    torch.save(load_exported(models["vae"]).model.state_dict(), vae_pt)
    one_line_error(invoke("sample", vae_pt, "--out", out), "is a VAE checkpoint", "--vae")
    one_line_error(invoke("sample", sit, "--vae", models["other_vae"], "--out", out), "--vae", "differ", "--force-vae")
    one_line_error(invoke("sample", sit, "--out", out, "-n", "0"), "-n 0")
    one_line_error(invoke("sample", sit, "--out", out, "--guidance-high", "1.5"), "--guidance-high 1.5")
    one_line_error(invoke("sample", sit, "--out", out, "--guidance-low", "-0.1"), "--guidance-low -0.1")
    one_line_error(invoke("sample", sit, "--out", out, "--class", "10"), "--class 10", "10 classes")
    one_line_error(invoke("sample", sit, "--out", out, "--cfg", "0.5"), "--cfg 0.5")
    one_line_error(invoke("sample", sit, "--out", out, "--mode", "sde", "--heun"), "--heun")
    one_line_error(invoke("sample", tmp_path / "missing", "--out", out), "MODEL", "no such")
    assert not out.exists()

    before = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    changed = [a if a != "2.0" else "3.0" for a in RUN]
    one_line_error(invoke("sample", sit, "--out", reference, "--batch-size", "7", *changed),
                   "written with other settings", "cfg_scale 2.0 (now 3.0)")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    one_line_error(invoke("sample", sit, "--out", foreign, *RUN), "not a sample folder")
    assert {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()} == before
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_force_vae_decodes_with_the_given_vae(models, tmp_path):
    ok("sample", models["sit"], "--vae", models["other_vae"], "--force-vae", "--out", tmp_path / "f", "-n", "2",
            "--steps", "2", "--quiet")
    manifest = json.loads((tmp_path / "f" / "sample.json").read_text())
    assert manifest["vae"]["vae_forced"] is True


# -- GPU ------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_bf16_compiled_sampling_is_resumable_and_close_to_fp32(models, tmp_path):
    if not torch.cuda.is_available():  # as tests/test_gpu.py: `-m gpu` without a GPU is an error, not a pass
        pytest.fail("the gpu tests need a CUDA device")
    common = ["-n", "64", "--mode", "sde", "--steps", "8", "--cfg", "2.0", "--guidance-high", "0.7", "--device", "cuda",
              "--quiet"]
    run_cli("sample", models["sit"], "--out", tmp_path / "bf16", "--batch-size", "32", "--compile", *common)
    run_cli("sample", models["sit"], "--out", tmp_path / "fp32", "--batch-size", "64", "--precision", "fp32", *common)
    bf16, fp32 = arrays(tmp_path / "bf16")[0].astype(int), arrays(tmp_path / "fp32")[0].astype(int)
    assert np.abs(bf16 - fp32).mean() < 8  # same noise on the same device: bf16 only rounds
    manifest = json.loads((tmp_path / "bf16" / "sample.json").read_text())
    assert manifest["settings"]["precision"] == "bf16" and manifest["settings"]["noise_device"] == "cuda"
