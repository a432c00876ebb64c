"""A third-party generator (the plugin of test_generator_plugin.py) trains with `train-sit` and samples
from its export, through the registry it was registered in."""

import json

import pytest
import torch

from conftest import run_cli
from test_generator_plugin import MyGenerators
from sendvae_cli.registry import Registry


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    out = tmp_path_factory.mktemp("plugin") / "latents.h5"
    run_cli("cache-latents", "shapes", "--vae", "tiny", "--random-weights", "--num-images", "32", "--resolution", "64",
            "--workers", "0", "--quiet", "--out", out)
    return out


@pytest.mark.parametrize("name", ["MicroFlow", "MySiT-micro/1"])
def test_plugin_generator_trains_with_repa_and_samples(latents, tmp_path, name):
    from sendvae_cli.flow.samplers import ode_sample
    from sendvae_cli.generators.export import load_generator_export
    from sendvae_cli.train.sit_config import SiTTrainConfig
    from sendvae_cli.train.sit_trainer import train_sit

    registry = Registry(load_outside=False)
    registry.register_plugin("my-generators", MyGenerators(), version="0.1")
    out = tmp_path / "run"
    cfg = SiTTrainConfig.from_flags("tiny", {"model": name, "batch_size": 8, "steps": 6, "log_every": 2,
                                             "checkpoint_every": 3, "sample_every": 3, "preview_count": 4,
                                             "preview_steps": 3},
                                    data=str(latents), images="shapes", random_weights=True, device="cpu",
                                    quiet=True, workers=0)
    train_sit(cfg, registry, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and all("repa" in r for r in rows)
    assert (out / "samples" / "step-000006.png").exists()

    loaded = load_generator_export(out, build=lambda generator, arch: registry.generator(generator).build(**arch))
    assert loaded.generator == name and loaded.num_classes == 5
    noise = torch.randn(2, 8, 4, 4)
    z = ode_sample(loaded.model, noise, torch.tensor([0, 3]), steps=3, cfg_scale=2.0, num_classes=5)
    assert z.shape == (2, 8, 4, 4) and torch.isfinite(z).all()
