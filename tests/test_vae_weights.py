"""VAE weight formats against the reference implementation (diffusers.AutoencoderKL).

A diffusers AutoencoderKL with random weights is the ground truth: its diffusers folder, the same
weights in REPA-E / LightningDiT `.pt` layouts, our export folder and our diffusers export must all
encode and decode as diffusers does. Broken inputs must give one-line UserErrors.
"""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from sendvae_cli.errors import UserError, WeightsNotFound
from sendvae_cli.registry import Registry
from sendvae_cli.vae.autoencoder import VAE_CONFIGS
from sendvae_cli.vae.export import export_diffusers, export_vae, load_exported
from sendvae_cli.vae.open import open_vae

diffusers = pytest.importorskip("diffusers")

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads that
    wait for each other make them 10-100x slower: run this module single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ATOL = 1e-5


def images(n=1, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def perturbed(model, seed=0):
    """Random weights everywhere (GroupNorm scales included), so a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_diffusers():
    # Same architecture as our tiny-f16d8: 5 levels, attention at the lowest one.
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 16, 32, 32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4,
        latent_channels=8, norm_num_groups=8, sample_size=64,
    )


def reference(dmodel, x):
    with torch.no_grad():
        dist = dmodel.encode(x).latent_dist
        return dist.mean, dist.logvar, dmodel.decode(dist.mean).sample


def assert_matches(loaded, ref, x):
    mean, logvar, decoded = ref
    with torch.no_grad():
        post = loaded.model.encode(x)
        assert torch.allclose(post.mean, mean, atol=ATOL)
        assert torch.allclose(post.logvar, logvar, atol=ATOL)
        assert torch.allclose(loaded.model.decode(mean), decoded, atol=ATOL)


def one_line(error):
    text = str(error.value)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def registry():
    return Registry(load_outside=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(diffusers folder, reference outputs, input) for a random tiny diffusers VAE."""
    torch.manual_seed(0)
    dmodel = perturbed(tiny_diffusers())
    folder = tmp_path_factory.mktemp("diffusers") / "tiny-vae"
    dmodel.save_pretrained(folder)
    x = images()
    return folder, reference(dmodel, x), x


@pytest.fixture(scope="module")
def ldm_state(tiny, registry):
    folder, _, _ = tiny
    return {k: v.clone() for k, v in open_vae(folder, registry).model.state_dict().items()}


STATS_MEAN = torch.linspace(-1, 1, 8)
STATS_STD = torch.linspace(0.5, 2, 8)


# --- diffusers in ----------------------------------------------------------------------------

def test_diffusers_folder_loads_and_matches_diffusers(tiny, registry):
    folder, ref, x = tiny
    loaded = open_vae(folder, registry)
    assert loaded.config == VAE_CONFIGS["tiny-f16d8"]
    assert loaded.provenance["format"] == "diffusers-folder" and loaded.provenance["config"] == "tiny-f16d8"
    assert loaded.latent_mean is None  # no latents_mean in the config: unknown, not guessed
    assert_matches(loaded, ref, x)


def test_bare_diffusers_file_with_old_attention_names_and_sd_layout(tmp_path, registry):
    """An SD-style VAE (no attention outside the middle block, 2 resnets), saved as one file with
    the pre-0.14 diffusers attention names; the architecture is inferred from shapes."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    dmodel = perturbed(diffusers.AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64))
    x = images(seed=1)
    ref = reference(dmodel, x)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in dmodel.state_dict().items():
        for new, legacy in old.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
        state[key] = value.contiguous()
    save_file(state, str(tmp_path / "sd-like.safetensors"))
    loaded = open_vae(tmp_path / "sd-like.safetensors", registry)
    assert loaded.config.ch_mult == (1, 1, 2, 2) and loaded.config.num_res_blocks == 2
    assert loaded.config.attn_levels() == () and loaded.config.downsample == 8
    assert loaded.provenance["format"] == "diffusers-file"
    assert_matches(loaded, ref, x)


# --- REPA-E / LightningDiT .pt in -------------------------------------------------------------

def test_repa_e_pt_with_latent_stats_and_discriminator(tmp_path, tiny, ldm_state, registry):
    _, ref, x = tiny
    torch.save(ldm_state, tmp_path / "e2e-tiny.pt")
    torch.save({"latents_scale": (1 / STATS_STD).view(1, 8, 1, 1), "latents_bias": STATS_MEAN.view(1, 8, 1, 1)},
               tmp_path / "e2e-tiny-latents-stats.pt")
    torch.save({"main.0.weight": torch.zeros(1)}, tmp_path / "e2e-tiny-discriminator-ckpt.pt")
    loaded = open_vae(tmp_path / "e2e-tiny.pt", registry)
    assert loaded.config == VAE_CONFIGS["tiny-f16d8"] and loaded.provenance["format"] == "ldm-file"
    assert_matches(loaded, ref, x)
    assert torch.allclose(loaded.latent_mean, STATS_MEAN) and torch.allclose(loaded.latent_std, STATS_STD)
    assert loaded.discriminator_weights == tmp_path / "e2e-tiny-discriminator-ckpt.pt"
    # REPA-E's download folder layout: the folder alone is enough.
    again = open_vae(str(tmp_path) + "/", registry)
    assert torch.equal(again.latent_std, loaded.latent_std)
    # ... and as the weights of a base of the same architecture.
    based = open_vae("tiny", registry, weights=tmp_path / "e2e-tiny.pt")
    assert based.provenance["base"] == "tiny"
    assert_matches(based, ref, x)


def test_lightningdit_checkpoint_with_training_extras(tmp_path, tiny, ldm_state, registry):
    _, ref, x = tiny
    nested = {"state_dict": {**ldm_state, "loss.discriminator.main.0.weight": torch.ones(2),
                             "loss.logvar": torch.zeros(()), "linear_proj.weight": torch.ones(3)},
              "epoch": 3}
    torch.save(nested, tmp_path / "vavae.pt")
    torch.save({"mean": STATS_MEAN.view(1, 8, 1, 1), "std": STATS_STD.view(1, 8, 1, 1)}, tmp_path / "latents_stats.pt")
    loaded = open_vae(tmp_path / "vavae.pt", registry)
    assert_matches(loaded, ref, x)
    assert loaded.provenance["ignored_keys"] == {"loss": 2, "linear_proj": 1}
    assert "loss.discriminator.main.0.weight" in loaded.extras
    assert torch.allclose(loaded.latent_std, STATS_STD)


def test_whole_repa_e_training_checkpoint(tmp_path, tiny, ldm_state, registry):
    _, ref, x = tiny
    ckpt = {"model": {"x_embedder.proj.weight": torch.zeros(4, 8, 1, 1)},
            "ema": {"x_embedder.proj.weight": torch.zeros(4, 8, 1, 1), "bn.running_mean": STATS_MEAN,
                    "bn.running_var": STATS_STD**2},
            "vae": ldm_state, "discriminator": {"main.0.weight": torch.zeros(1)},
            "args": argparse.Namespace(vae="f16d32", model="SiT-XL/1"), "steps": 400000}
    torch.save(ckpt, tmp_path / "0400000.pt")
    loaded = open_vae(tmp_path / "0400000.pt", registry)
    assert loaded.provenance["container"] == "vae"
    assert_matches(loaded, ref, x)
    assert torch.allclose(loaded.latent_mean, STATS_MEAN) and torch.allclose(loaded.latent_std, STATS_STD)


# --- out: export folder and diffusers -------------------------------------------------------------

def test_export_folder_round_trip_in_a_fresh_process(tmp_path, tiny, registry):
    folder, _, x = tiny
    loaded = open_vae(folder, registry)
    out = export_vae(loaded, tmp_path / "runs" / "vae", latent_mean=STATS_MEAN, latent_std=STATS_STD,
                     provenance={"base": "tiny", "teacher": "dinov2-b", "steps": 7})
    assert sorted(p.name for p in out.iterdir()) == ["vae.json", "vae.safetensors"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    info = json.loads((out / "vae.json").read_text())
    assert info["format"] == "sendvae-vae" and info["format_version"] == 1 and info["config_name"] == "tiny-f16d8"
    assert info["latent_channels"] == 8 and info["downsample"] == 16 and len(info["weights_sha256"]) == 64
    assert info["provenance"]["teacher"] == "dinov2-b" and info["producer"]["name"] == "sendvae"
    assert info["latent_std"] == pytest.approx(STATS_STD.tolist())

    from safetensors.torch import load_file, save_file

    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    code = (
        "import sys, torch; from safetensors.torch import load_file, save_file\n"
        "from sendvae_cli.vae import open_vae\n"
        "v = open_vae(sys.argv[1])\n"
        "x = load_file(sys.argv[2])['x']\n"
        "with torch.no_grad(): m = v.model.encode(x).mean\n"
        "save_file({'mean': m, 'std': v.latent_std}, sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.safetensors"), str(tmp_path / "m.safetensors")],
                   check=True, timeout=120, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    got = load_file(str(tmp_path / "m.safetensors"))
    with torch.no_grad():
        want = loaded.model.encode(x).mean
    assert torch.allclose(got["mean"], want, atol=1e-6)
    assert torch.allclose(got["std"], STATS_STD)


def test_export_into_a_run_folder_replaces_files_and_detects_tampering(tmp_path, registry):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("keep me\n")
    model = registry.vae_base("tiny").build().model
    export_vae(model, run)
    first = load_exported(run)
    assert first.latent_mean is None and first.info["latent_mean"] is None
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    export_vae(model, run, provenance={"steps": 2})
    second = load_exported(run)
    assert (run / "train.log").read_text() == "keep me\n"
    assert sorted(p.name for p in run.iterdir()) == ["train.log", "vae.json", "vae.safetensors"]
    assert torch.equal(second.model.quant_conv.weight, model.quant_conv.weight)
    assert second.provenance["exported"] == {"steps": 2}
    data = bytearray((run / "vae.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (run / "vae.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError) as error:
        load_exported(run)
    assert "SHA-256" in one_line(error)


def test_diffusers_export_loads_in_diffusers(tmp_path, tiny, registry):
    folder, ref, x = tiny
    loaded = open_vae(folder, registry)
    out = export_diffusers(loaded, tmp_path / "hf", latent_mean=STATS_MEAN, latent_std=STATS_STD)
    dmodel = diffusers.AutoencoderKL.from_pretrained(out).eval()
    assert dmodel.config.latents_std == pytest.approx(STATS_STD.tolist()) and dmodel.config.scaling_factor == 1.0
    assert_matches(loaded, reference(dmodel, x), x)
    assert_matches(loaded, ref, x)
    # ... and reads back through our own loader, statistics included.
    back = open_vae(out, registry)
    assert torch.allclose(back.latent_mean, STATS_MEAN)


# --- errors ------------------------------------------------------------------------------------

def test_files_of_another_kind_are_one_line_errors(tmp_path, registry):
    from safetensors.torch import save_file

    torch.save({"model": {"x_embedder.proj.weight": torch.zeros(2), "blocks.0.attn.qkv.weight": torch.zeros(2)},
                "args": argparse.Namespace(model="SiT-XL/2")}, tmp_path / "sit.pt")
    save_file({"cls_token": torch.zeros(1, 1, 4), "blocks.0.norm1.weight": torch.zeros(4)}, str(tmp_path / "teacher.safetensors"))
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a checkpoint" * 10)
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for name, expected in [("sit.pt", "not an AutoencoderKL state dict"), ("teacher.safetensors", "not an AutoencoderKL"),
                           ("corrupt.pt", "not a readable weights file"), ("corrupt.safetensors", "not a readable"),
                           ("tensor.pt", "expected a VAE state dict")]:
        with pytest.raises(UserError) as error:
            open_vae(tmp_path / name, registry)
        text = one_line(error)
        assert expected in text and name in text, text


def test_shape_mismatch_names_the_file_base_and_what_it_holds(tmp_path, ldm_state, registry):
    torch.save(ldm_state, tmp_path / "tiny.pt")
    with pytest.raises(UserError) as error:
        open_vae("va-vae", registry, weights=tmp_path / "tiny.pt")
    text = one_line(error)
    assert "tiny.pt" in text and "VAE base 'va-vae'" in text and "of another shape" in text and "f16d8" in text
    bad = dict(ldm_state)
    bad["quant_conv.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(UserError) as error:
        open_vae("tiny", registry, weights=tmp_path / "bad.pt")
    assert "quant_conv.weight" in one_line(error)


def test_unsupported_diffusers_config_and_missing_paths(tmp_path, registry):
    (tmp_path / "tae").mkdir()
    (tmp_path / "tae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny"}))
    with pytest.raises(UserError) as error:
        open_vae(tmp_path / "tae", registry)
    assert "AutoencoderTiny" in one_line(error)
    with pytest.raises(UserError) as error:
        open_vae("./nowhere/vae.pt", registry)
    assert "no such file or folder" in one_line(error)
    with pytest.raises(UserError) as error:
        open_vae("va-vea", registry)
    assert "Did you mean 'va-vae'" in one_line(error)
    with pytest.raises(UserError) as error:
        open_vae(tmp_path, registry)  # a folder with nothing in it
    assert "no VAE weights" in one_line(error)


def test_hub_base_offline_without_cache_says_what_is_missing(tmp_path, monkeypatch, registry):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFound) as error:
        open_vae("sd-vae", registry)
    text = one_line(error)
    assert "REPA-E/sdvae" in text and "--vae-weights" in text and "--random-weights" in text
    # --random-weights builds the same architecture without touching the hub.
    assert open_vae("sd-vae", registry, random_weights=True).config == VAE_CONFIGS["f8d4"]


def test_building_from_a_state_dict_copies_and_exports_feed_bases(tmp_path, registry):
    from sendvae_cli.vae.formats import build_vae

    source = registry.vae_base("tiny").build().model
    copy = build_vae(source.config, source.state_dict())
    with torch.no_grad():
        copy.quant_conv.weight.zero_()
    assert source.quant_conv.weight.abs().sum() > 0  # no shared storage
    export_vae(source, tmp_path / "exp")
    assert torch.equal(open_vae("tiny", registry, weights=tmp_path / "exp").model.quant_conv.weight,
                       source.quant_conv.weight)
    with pytest.raises(UserError) as error:
        open_vae("sd-vae", registry, weights=tmp_path / "exp")
    assert "does not fit VAE base 'sd-vae'" in one_line(error)


def test_a_vae_without_normalisation_has_no_diffusers_form(tmp_path):
    from sendvae_cli.vae.autoencoder import AutoencoderKL
    from sendvae_cli.vae.export import export_diffusers

    with pytest.raises(UserError) as error:
        export_diffusers(AutoencoderKL("tiny-f4d4"), tmp_path / "diffusers")
    assert "cannot export to diffusers" in one_line(error) and "no normalisation" in one_line(error)
    assert not (tmp_path / "diffusers").exists()
