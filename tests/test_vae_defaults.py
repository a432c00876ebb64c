"""Defaults that follow the VAE: --resolution from its vae.json; a train-vae run folder stands for its export."""

import json

import h5py
import pytest
import torch

from conftest import invoke
from sendvae_cli.errors import UserError
from sendvae_cli.vae.open import open_vae, recorded_resolution


def export_tiny(folder, resolution):
    from sendvae_cli.vae.autoencoder import VAE_CONFIGS
    from sendvae_cli.vae.export import export_vae
    from sendvae_cli.vae.formats import build_vae

    torch.manual_seed(0)
    return export_vae(build_vae(VAE_CONFIGS["tiny-f16d8"]), folder, provenance={"resolution": resolution})


def test_cache_latents_takes_the_resolution_the_vae_was_trained_at(tmp_path):
    run = tmp_path / "run"
    export_tiny(run / "export", 48)
    (run / "checkpoints").mkdir()
    assert recorded_resolution(run / "export") == recorded_resolution(run) == 48
    proc = invoke("cache-latents", "shapes", "--num-images", "8", "--vae", run, "--workers", "0",
                  "--out", tmp_path / "l.h5")
    assert proc.returncode == 0, proc.stderr
    assert f"--resolution 48: the resolution {run} was trained at" in proc.stderr
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert f["mean"].shape[-2:] == (3, 3)  # 48 px / 16
    proc = invoke("cache-latents", "shapes", "--num-images", "8", "--vae", run, "--workers", "0", "--resolution", "32",
                  "--out", tmp_path / "m.h5")
    assert proc.returncode == 0 and "trained at" not in proc.stderr


def test_a_run_folder_is_its_export_and_an_unfinished_one_says_so(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"producer": "sendvae 0.1.0", "lr": 3e-4}))
    with pytest.raises(UserError, match="a train-vae run folder with no export/ yet"):
        open_vae(run)
    export_tiny(run / "export", 32)
    assert open_vae(run).provenance == open_vae(run / "export").provenance
