"""The LDM AutoencoderKL: shapes, key layout, posterior maths, gradients, configs and bases.

Full-size configs are built on the meta device (shapes and key names without the compute); the
numeric tests use the tiny f16 config at 64 px.
"""

import subprocess
import sys

import pytest
import torch

from sendvae_cli.errors import UserError
from sendvae_cli.registry import Registry
from sendvae_cli.vae.autoencoder import VAE_CONFIGS, AutoencoderKL, DiagonalGaussian, VAEConfig, config_name


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads that
    wait for each other make them 10-100x slower: run this module single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return AutoencoderKL("tiny-f16d8").eval()


def images(n=1, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("name", list(VAE_CONFIGS))
@pytest.mark.parametrize("size", [32, 64, 256])
def test_every_config_gives_the_latent_grid_of_its_downsampling(name, size):
    config = VAE_CONFIGS[name]
    with torch.device("meta"):
        model = AutoencoderKL(config)
        recon, posterior = model(torch.empty(2, 3, size, size))
    assert tuple(posterior.mean.shape) == (2, *config.latent_shape(size))
    assert tuple(posterior.logvar.shape) == tuple(posterior.mean.shape)
    assert tuple(recon.shape) == (2, 3, size, size)


def test_table_sizes_match_the_paper():
    assert VAE_CONFIGS["f8d4"].latent_shape(256) == (4, 32, 32)
    assert VAE_CONFIGS["f16d32"].latent_shape(256) == (32, 16, 16)
    assert VAE_CONFIGS["f16d16"].latent_shape(256) == (16, 16, 16)
    assert VAE_CONFIGS["f16d64"].latent_shape(256) == (64, 16, 16)
    assert VAE_CONFIGS["tiny-f16d8"].latent_shape(64) == (8, 4, 4)
    assert VAE_CONFIGS["f16d32"].ch_mult == (1, 1, 2, 2, 4) and VAE_CONFIGS["f8d4"].ch_mult == (1, 2, 4, 4)


def test_state_dict_follows_the_ldm_key_layout():
    with torch.device("meta"):
        f16 = AutoencoderKL("f16d32").state_dict()
        f8 = AutoencoderKL("f8d4").state_dict()
    for key in ["encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.block.1.conv2.bias",
                "encoder.down.0.downsample.conv.weight", "encoder.down.2.block.0.nin_shortcut.weight",
                "encoder.down.4.attn.1.q.weight", "encoder.mid.block_1.conv1.weight", "encoder.mid.attn_1.q.weight",
                "encoder.mid.attn_1.proj_out.weight", "encoder.mid.block_2.norm2.weight", "encoder.norm_out.weight",
                "encoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_in.weight",
                "decoder.mid.attn_1.norm.weight", "decoder.up.4.attn.2.v.weight", "decoder.up.3.upsample.conv.weight",
                "decoder.up.0.block.2.conv1.weight", "decoder.norm_out.bias", "decoder.conv_out.weight"]:
        assert key in f16, key
    assert "encoder.down.4.downsample.conv.weight" not in f16 and "decoder.up.0.upsample.conv.weight" not in f16
    assert not any("temb" in k for k in f16)
    assert tuple(f16["encoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    assert tuple(f16["quant_conv.weight"].shape) == (64, 64, 1, 1)
    assert not any(".attn." in k for k in f8)  # SD-VAE: attention only in the middle blocks
    assert tuple(f8["decoder.up.3.upsample.conv.weight"].shape) == (512, 512, 3, 3)
    # Parameter counts of the published models: SD-VAE 83.65M, VA-VAE ~69.8M.
    with torch.device("meta"):
        assert sum(p.numel() for p in AutoencoderKL("f8d4").parameters()) == 83_653_863
        assert sum(p.numel() for p in AutoencoderKL("f16d32").parameters()) == 69_836_067


def test_tiny_model_runs_on_cpu_and_rejects_other_sizes(tiny):
    x = images()
    with torch.no_grad():
        recon, posterior = tiny(x)
    assert posterior.mean.shape == (1, 8, 4, 4) and recon.shape == x.shape
    assert torch.isfinite(recon).all()
    with pytest.raises(ValueError, match="multiple of the VAE downsampling 16"):
        tiny.encode(images(size=40))
    assert tiny.downsample == 16 and tiny.latent_channels == 8


def test_posterior_clamps_logvar_and_derives_std():
    mean = torch.zeros(1, 2, 1, 1)
    logvar = torch.tensor([-100.0, 100.0]).view(1, 2, 1, 1)
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert post.logvar.flatten().tolist() == [-30.0, 20.0]
    assert torch.allclose(post.std, torch.exp(0.5 * post.logvar))
    assert torch.allclose(post.var, torch.exp(post.logvar))
    assert torch.isfinite(post.kl()).all()


def test_logvar_init_starts_the_posterior_std_small_and_leaves_the_mean():
    torch.manual_seed(0)
    vae = AutoencoderKL("tiny-f4d4")
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = vae.encode(x)
        vae.init_posterior_logvar(-4.0)
        after = vae.encode(x)
    assert before.std.mean() > 0.5  # PyTorch's init: a std near 1, as wide as the means' spread
    assert 0.08 < after.std.mean() < 0.25  # e^-2 = 0.14, give or take the random weights' share
    assert torch.equal(before.mean, after.mean)


def test_mode_is_deterministic_and_sample_follows_the_generator(tiny):
    x = images(size=32)
    with torch.no_grad():
        a, b = tiny.encode(x), tiny.encode(x)
        assert torch.equal(a.mode(), b.mode()) and torch.equal(a.mode(), a.mean)
        r1, _ = tiny(x, sample=False)
        r2, _ = tiny(x, sample=False)
        assert torch.equal(r1, r2)
        s1 = a.sample(torch.Generator().manual_seed(3))
        s2 = a.sample(torch.Generator().manual_seed(3))
        assert torch.equal(s1, s2) and not torch.equal(s1, a.mean)


def test_kl_matches_the_closed_form():
    g = torch.Generator().manual_seed(1)
    moments = torch.randn(3, 8, 2, 2, generator=g)
    post = DiagonalGaussian(moments)
    q = torch.distributions.Normal(post.mean, post.std)
    p = torch.distributions.Normal(torch.zeros_like(post.mean), torch.ones_like(post.std))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=[1, 2, 3])
    assert post.kl().shape == (3,)
    assert torch.allclose(post.kl(), expected, atol=1e-5)
    # A standard normal posterior has zero KL.
    assert torch.allclose(DiagonalGaussian(torch.zeros(1, 8, 2, 2)).kl(), torch.zeros(1))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = AutoencoderKL("tiny-f16d8").train()
    x = images(size=32)
    recon, posterior = model(x, generator=torch.Generator().manual_seed(0))
    loss = (recon - x).abs().mean() + 1e-6 * posterior.kl().mean()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_config_round_trip_and_names():
    for name, config in VAE_CONFIGS.items():
        again = VAEConfig.from_dict(config.to_dict())
        assert again == config and config_name(again) == name
    assert config_name(VAEConfig(ch=64)) is None
    with pytest.raises(ValueError, match="unknown VAE config fields"):
        VAEConfig.from_dict({"ch": 128, "channels": 3})
    with pytest.raises(ValueError, match="divisible by norm_groups"):
        VAEConfig(ch=16)
    assert VAE_CONFIGS["f16d32"].downsample == 16 and VAE_CONFIGS["f16d32"].latent_channels == 32
    assert VAE_CONFIGS["f16d32"].attn_levels() == (4,) and VAE_CONFIGS["tiny-f16d8"].attn_levels() == (4,)


def test_builtin_bases_are_registered_and_agree_with_their_configs():
    from sendvae_cli.vae.builtin import VAE_BASES

    registry = Registry(load_outside=False)
    names = registry.names("vae_base")
    for name in ["sd-vae", "va-vae", "in-vae", "e2e-vae", "f8d4-scratch", "f16d16-scratch", "f16d32-scratch",
                 "f16d64-scratch", "tiny"]:
        assert name in names
    for spec in VAE_BASES:
        config = VAE_CONFIGS[spec.options["config"]]
        assert (spec.downsample, spec.latent_channels) == (config.downsample, config.latent_channels), spec.name
    assert registry.vae_base("vavae").name == "va-vae"
    assert registry.plugin_of("vae_base", "va-vae") == "sendvae.vae_bases"
    with pytest.raises(UserError, match="Did you mean 'va-vae'"):
        registry.vae_base("va-vea")


def test_tiny_base_builds_with_random_weights():
    loaded = Registry(load_outside=False).vae_base("tiny").build()
    assert loaded.config == VAE_CONFIGS["tiny-f16d8"]
    assert loaded.provenance["base"] == "tiny" and loaded.provenance["format"] == "random-init"
    assert loaded.latent_mean is None and not loaded.has_latent_stats


def test_spec_modules_do_not_import_torch():
    code = ("import sys, sendvae_cli.vae, sendvae_cli.vae.builtin; from sendvae_cli.registry import Registry; "
            "Registry(load_outside=False); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_norm_groups_zero_builds_a_vae_without_normalisation():
    config = VAE_CONFIGS["tiny-f4d4"]
    assert config.norm_groups == 0 and "no norm groups" in config.describe()
    model = AutoencoderKL(config)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert not any("norm" in k for k in model.state_dict())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    recon, posterior = model(x, sample=False)
    assert recon.shape == x.shape and posterior.mean.shape == (2, 4, 16, 16)
    assert config_name(VAEConfig.from_dict(config.to_dict())) == "tiny-f4d4"
    with pytest.raises(ValueError):
        VAEConfig(ch=8, ch_mult=(1, 2), norm_groups=-1)
