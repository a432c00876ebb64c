"""The generator export folder and REPA / REPA-E checkpoints, against REPA-E's own outputs.

tests/fixtures/repae_sit_tiny.pt is a checkpoint in REPA-E's layout written by REPA-E's SiT, and
repae_sit_tiny_outputs.safetensors holds what their forward pass returned (see fixtures/README.md).
"""

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, assert_matches_fixture
from sendvae_cli.errors import UserError
from sendvae_cli.generators.export import (export_repa_checkpoint, import_repa_checkpoint, load_generator_export,
                                           looks_like_generator, save_generator_export)
from sendvae_cli.generators.sit import SiT

FIXTURE = REPO / "tests" / "fixtures" / "repae_sit_tiny.pt"
OUTPUTS = load_file(str(REPO / "tests" / "fixtures" / "repae_sit_tiny_outputs.safetensors"))


def outputs(model):
    with torch.no_grad():
        return model.forward_with_projections(OUTPUTS["x"], OUTPUTS["t"], OUTPUTS["y"])


@pytest.fixture(scope="module")
def imported():
    return import_repa_checkpoint(FIXTURE)


def test_repae_checkpoint_forward_matches_their_code(imported):
    v, projected = outputs(imported.model)
    assert_matches_fixture(v, OUTPUTS["v_ema"])
    assert_matches_fixture(projected[0], OUTPUTS["proj_ema"])
    raw = import_repa_checkpoint(FIXTURE, use_ema=False)
    assert_matches_fixture(outputs(raw.model)[0], OUTPUTS["v_model"])
    assert not torch.allclose(OUTPUTS["v_model"], OUTPUTS["v_ema"], atol=1e-3)


def test_repae_checkpoint_architecture_and_statistics(imported):
    arch = imported.arch
    assert (arch["depth"], arch["width"], arch["heads"], arch["patch_size"], arch["input_size"]) == (2, 64, 2, 2, 8)
    assert (arch["encoder_depth"], arch["projector_dims"], arch["projector_width"]) == (1, [32], 64)
    assert arch["num_classes"] == imported.num_classes == 10 and arch["class_dropout"] == 0.1 and not arch["qk_norm"]
    assert imported.generator == "SiT-tiny/2" and imported.meta["steps"] == 7 and imported.meta["flavour"] == "repa-e"
    with pytest.raises(Exception):  # REPA's args are an argparse.Namespace: plain weights_only refuses it
        torch.load(FIXTURE, weights_only=True, map_location="cpu")
    with torch.serialization.safe_globals([argparse.Namespace]):
        ema = torch.load(FIXTURE, weights_only=True, map_location="cpu")["ema"]
    assert torch.allclose(imported.latent_mean, ema["bn.running_mean"])
    assert torch.allclose(imported.latent_std, ema["bn.running_var"].sqrt())
    assert imported.vae["source"] == "pretrained/sdvae/sdvae-f8d4.pt"


def test_export_folder_round_trip_and_bytes(imported, tmp_path):
    kwargs = dict(generator=imported.generator, latent_stats=(imported.latent_mean, imported.latent_std),
                  vae={"sha256": "ab" * 32, "source": "sd-vae", "resolution": 128, "downsample": 16},
                  extra={"steps": 7})
    a = save_generator_export(tmp_path / "a", imported.model, **kwargs)
    b = save_generator_export(tmp_path / "run" / "export", imported.model, **kwargs)
    for name in ("generator.safetensors", "generator.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    text = (a / "generator.json").read_text()
    info = json.loads(text)
    assert list(info) == sorted(info) and info["format"] == "sendvae-generator" and info["format_version"] == 1
    assert info["family"] == "SiT" and info["num_classes"] == 10 and info["vae"]["downsample"] == 16
    # An export folder, a run folder (its export/) and the generator.json itself all load.
    for path in (a, tmp_path / "run", a / "generator.json"):
        loaded = load_generator_export(path)
        assert not loaded.model.training and loaded.generator == "SiT-tiny/2"
        assert_matches_fixture(outputs(loaded.model)[0], OUTPUTS["v_ema"])
        assert torch.equal(loaded.latent_std, imported.latent_std) and loaded.meta["extra"] == {"steps": 7}
    # Rebuilt through a build function (what a registry lookup does for plugin generators).
    seen = []
    loaded = load_generator_export(a, build=lambda name, arch: seen.append(name) or SiT(**arch))
    assert seen == ["SiT-tiny/2"] and loaded.arch == imported.arch


def test_export_folder_errors(imported, tmp_path):
    folder = save_generator_export(tmp_path / "e", imported.model, generator="SiT-tiny/2")
    assert load_generator_export(folder).latent_mean is None
    weights = folder / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="SHA-256"):
        load_generator_export(folder)
    (folder / "generator.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="not a sendvae generator export"):
        load_generator_export(folder)
    with pytest.raises(UserError, match="train-sit run folder"):
        load_generator_export(tmp_path)
    info = json.loads(json.dumps({"format": "sendvae-sit", "format_version": 1, "generator": "MicroFlow",
                                  "family": "my_plugin.MicroFlow", "arch": {}, "num_classes": 2}))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "sit.json").write_text(json.dumps(info))
    (tmp_path / "p" / "sit.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="comes from a plugin"):
        load_generator_export(tmp_path / "p", verify=False)


def test_exports_of_older_versions_still_load(imported, tmp_path):
    """Exports written as sit.safetensors + sit.json (format "sendvae-sit") load; rewriting the
    folder replaces them by the current names."""
    folder = save_generator_export(tmp_path / "old", imported.model, generator="SiT-tiny/2")
    info = json.loads((folder / "generator.json").read_text())
    (folder / "generator.safetensors").rename(folder / "sit.safetensors")
    (folder / "generator.json").unlink()
    (folder / "sit.json").write_text(json.dumps(dict(info, format="sendvae-sit", weights="sit.safetensors")))
    for path in (folder, folder / "sit.json"):
        assert_matches_fixture(outputs(load_generator_export(path).model)[0], OUTPUTS["v_ema"])
    save_generator_export(folder, imported.model, generator="SiT-tiny/2")
    assert sorted(p.name for p in folder.iterdir()) == ["generator.json", "generator.safetensors"]


def test_export_back_to_repa_layouts(imported, tmp_path):
    repae = export_repa_checkpoint(imported, tmp_path / "repae.pt", steps=7)
    plain = torch.load(repae, weights_only=True, map_location="cpu")  # plain data: no safe globals needed
    assert set(plain) == {"model", "ema", "opt", "args", "steps"} and plain["args"]["model"] == "SiT-tiny/2"
    with torch.serialization.safe_globals([argparse.Namespace]):  # what import_repa_checkpoint allows
        theirs = torch.load(FIXTURE, weights_only=True, map_location="cpu")
    assert set(plain["ema"]) == set(theirs["ema"])
    again = import_repa_checkpoint(repae)
    assert_matches_fixture(outputs(again.model)[0], OUTPUTS["v_ema"])
    assert torch.allclose(again.latent_std, imported.latent_std) and again.arch == imported.arch
    # REPA's layout has no bn.*: 4-channel latents then get REPA's fixed SD-VAE scale.
    repa = export_repa_checkpoint(imported.model, tmp_path / "repa.pt", flavour="repa", generator="SiT-tiny/2")
    assert not any(k.startswith("bn.") for k in torch.load(repa, weights_only=True)["ema"])
    assumed = import_repa_checkpoint(repa)
    assert torch.allclose(assumed.latent_std, torch.full((4,), 1 / 0.18215)) and assumed.meta["flavour"] == "repa"
    with pytest.raises(ValueError, match="give latent_stats"):
        export_repa_checkpoint(imported.model, tmp_path / "x.pt")


def test_bare_and_legacy_state_dicts(imported, tmp_path):
    state = {k: v for k, v in imported.model.state_dict().items()}
    legacy = {(f"decoder_blocks.0.{k[len('blocks.1.'):]}" if k.startswith("blocks.1.") else k): v
              for k, v in state.items()}
    torch.save(legacy, tmp_path / "last.pt")
    loaded = import_repa_checkpoint(tmp_path / "last.pt", encoder_depth=1, generator="SiT-tiny/2")
    assert_matches_fixture(outputs(loaded.model)[0], OUTPUTS["v_ema"])
    assert loaded.arch["heads"] == 2  # width 64 is SiT-tiny's


def test_unreadable_checkpoints_are_one_line_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="weights_only=True"):
        import_repa_checkpoint(tmp_path / "junk.pt")
    torch.save({"vae": {"w": torch.zeros(1)}}, tmp_path / "vae.pt")
    with pytest.raises(UserError, match="no \"ema\" or \"model\""):
        import_repa_checkpoint(tmp_path / "vae.pt")
    with pytest.raises(UserError, match="no such file"):
        import_repa_checkpoint(tmp_path / "missing.pt")


def test_looks_like_generator(imported, tmp_path):
    folder = save_generator_export(tmp_path / "run" / "export", imported.model, generator="SiT-tiny/2")
    assert looks_like_generator(folder) and looks_like_generator(tmp_path / "run") and looks_like_generator(FIXTURE)
    torch.save({"vae": {"w": torch.zeros(1)}}, tmp_path / "vae.pt")
    assert not looks_like_generator(tmp_path / "vae.pt") and not looks_like_generator(tmp_path)
    assert not looks_like_generator(tmp_path / "nothing")
