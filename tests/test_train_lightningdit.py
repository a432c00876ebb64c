"""LightningDiT through the commands: listed by `sendvae plugins`, trained by `train-sit` (with and
without REPA) on a latent cache, sampled with its own protocol's options, and found by hub name
in a Hugging Face cache the test writes."""

import json

import numpy as np
import pytest
import torch

from conftest import invoke, one_line_error, run_cli

TRAIN = ["--preset", "tiny", "--model", "LightningDiT-tiny/1", "--batch-size", "8", "--steps", "4", "--log-every",
         "2", "--checkpoint-every", "4", "--sample-every", "4", "--preview-count", "2", "--preview-steps", "2",
         "--workers", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    out = tmp_path_factory.mktemp("ldit") / "latents.h5"
    run_cli("cache-latents", "shapes", "--vae", "tiny", "--random-weights", "--num-images", "16", "--resolution", "64",
            "--workers", "0", "--quiet", "--out", out)
    return out


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_plugins_lists_the_lightningdit_sizes():
    proc = invoke("plugins", "--json")
    names = [g["name"] for g in json.loads(proc.stdout)["generators"]]
    for name in ("LightningDiT-B/1", "LightningDiT-L/2", "LightningDiT-XL/1", "LightningDiT-1p0B/2", "SiT-XL/1"):
        assert name in names


@pytest.mark.parametrize("repa", [True, False])
def test_tiny_lightningdit_trains_and_samples(latents, tmp_path, repa):
    run = tmp_path / "run"
    flags = ["--images", "shapes", "--random-weights"] if repa else ["--proj-weight", "0"]
    proc = invoke("train-sit", latents, "--out", run, *TRAIN, *flags)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = metrics(run)
    assert [r["step"] for r in rows] == [2, 4] and all(("repa" in r) == repa for r in rows)
    info = json.loads((run / "export" / "generator.json").read_text())
    assert info["family"] == "LightningDiT" and info["generator"] == "LightningDiT-tiny/1"
    assert info["arch"]["swiglu"] and info["arch"]["rope"] and bool(info["arch"]["projector_dims"]) == repa

    out = tmp_path / "samples"
    proc = invoke("sample", run, "--preset", "lightningdit", "-n", "3", "--steps", "3", "--out", out, "--device", "cpu",
                  "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((out / "sample.json").read_text())
    assert manifest["cfg"]["channels"] == 3 and manifest["cfg"]["interval"] == [0.0, 0.875]
    assert manifest["time_grid"] == "shifted (0.3)" and manifest["settings"]["labels"].startswith("random")
    with np.load(out / "samples.npz") as data:
        assert data["arr_0"].shape == (3, 64, 64, 3)


def test_init_from_their_checkpoint_layout(latents, tmp_path):
    """--init takes a .pt as hustvl's train.py writes it; REPA projectors it lacks start fresh;
    weights of another architecture are one line."""
    from safetensors.torch import load_file

    run = tmp_path / "plain"
    assert invoke("train-sit", latents, "--out", run, *TRAIN, "--proj-weight", "0").returncode == 0
    state = load_file(str(run / "export" / "generator.safetensors"))
    torch.save({"ema": state, "config": {"model": {"model_type": "LightningDiT-tiny/1"}}}, tmp_path / "0000004.pt")
    proc = invoke("train-sit", latents, "--out", tmp_path / "init", *TRAIN, "--init", tmp_path / "0000004.pt",
                  "--images", "shapes", "--random-weights", "--steps", "2", "--log-every", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Started from the trained weights: the first step's velocity loss is the trained model's, not a fresh one's.
    fresh = tmp_path / "fresh"
    invoke("train-sit", latents, "--out", fresh, *TRAIN, "--images", "shapes", "--random-weights", "--steps", "2",
           "--log-every", "1")
    assert metrics(tmp_path / "init")[0]["velocity"] != metrics(fresh)[0]["velocity"]
    proc = invoke("train-sit", latents, "--out", tmp_path / "x", *TRAIN, "--proj-weight", "0", "--model", "SiT-tiny/1",
                  "--init", tmp_path / "0000004.pt")
    one_line_error(proc, "--init", "does not fit --model SiT-tiny/1")


def test_options_a_generator_lacks_are_refused(latents, tmp_path):
    proc = invoke("train-sit", latents, "--out", tmp_path / "r", *TRAIN, "--images", "shapes", "--random-weights",
                  "--encoder-depth", "9")
    one_line_error(proc, "--model LightningDiT-tiny/1", "encoder_depth 9 must lie in 1..2")
    proc = invoke("train-sit", latents, "--out", tmp_path / "r", *TRAIN, "--root", tmp_path)
    one_line_error(proc, "--root", "--images")


def tiny_lightningdit_checkpoint(path):
    """What hustvl's train.py writes ({"model", "ema", "opt", "config"}), for 8 x 2 x 2 latents."""
    from sendvae_cli.generators.lightningdit import LightningDiT

    torch.manual_seed(0)
    model = LightningDiT(input_size=2, in_channels=8, patch_size=1, depth=2, width=32, heads=2, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "ema": state, "opt": {}, "config": {"model": {"model_type": "LightningDiT-tiny/1"}}},
               path)


def hub_cache(root, repo, files):
    """huggingface_hub's cache layout: models--ORG--NAME/{refs/main, snapshots/REV/FILE}."""
    folder = root / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    for name, write in files.items():
        write(snapshot / name)
    return root


def test_a_generator_by_hub_name_samples_offline(tmp_path):
    from test_sample import tiny_vae

    vae = tiny_vae(tmp_path / "vae", seed=0)
    stats = tmp_path / "latents_stats.pt"
    torch.save({"mean": torch.zeros(1, 8, 1, 1), "std": torch.ones(1, 8, 1, 1)}, stats)
    cache = hub_cache(tmp_path / "hub", "hustvl/lightningdit-tiny",
                      {"lightningdit-tiny-800ep.pt": tiny_lightningdit_checkpoint})
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "samples"
    run_cli("sample", "hf:hustvl/lightningdit-tiny", "--vae", vae, "--latent-stats", stats, "-n", "2", "--steps", "2",
            "--cfg", "2", "--cfg-channels", "3", "--timestep-shift", "0.3", "--out", out, "--device", "cpu", "--quiet",
            env=env)
    manifest = json.loads((out / "sample.json").read_text())
    assert manifest["model"]["model_generator"] == "LightningDiT-tiny/1" and manifest["status"] == "complete"
    proc = run_cli("sample", "hf:hustvl/lightningdit-tiny/other.pt", "--vae", vae, "--out", tmp_path / "x",
                   env=env, check=False)
    one_line_error(proc, "other.pt", "`hf download hustvl/lightningdit-tiny other.pt`")
    proc = run_cli("sample", "hf:REPA-E/sit-ldm-e2e-vavae", "--vae", vae, "--out", tmp_path / "x", env=env,
                   check=False)
    one_line_error(proc, "not in the Hugging Face cache", "`hf download REPA-E/sit-ldm-e2e-vavae`")
