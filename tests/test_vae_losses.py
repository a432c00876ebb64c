"""VAE losses: LPIPS against the lpips package, the PatchGAN discriminator, hinge losses, VAELoss."""

import argparse
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import save_file

from sendvae_cli import weights
from sendvae_cli.errors import UserError, WeightsNotFound
from sendvae_cli.vae import lpips as lpips_module
from sendvae_cli.vae.discriminator import NLayerDiscriminator, hinge_d_loss, hinge_g_loss, load_discriminator
from sendvae_cli.vae.losses import VAELoss
from sendvae_cli.vae.lpips import LPIPS, TAPS

# REPA-E's discriminator state-dict keys (taming NLayerDiscriminator, BatchNorm, n_layers=3).
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
REPAE_DISC_KEYS = (["main.0.weight", "main.0.bias", "main.2.weight"] + [f"main.3.{k}" for k in BN]
                   + ["main.5.weight"] + [f"main.6.{k}" for k in BN] + ["main.8.weight"]
                   + [f"main.9.{k}" for k in BN] + ["main.11.weight", "main.11.bias"])


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def reference():
    """The lpips package's VGG LPIPS: random trunk, its real v0.1 lin weights, no download."""
    lpips_pkg = pytest.importorskip("lpips")
    from torchvision.models import vgg

    def features_only(pretrained=False, **kwargs):
        # torchvision's own VGG16 `features`, without allocating the 120M-parameter classifier the
        # package never uses (4 s of the test's time on 2 cores).
        assert not pretrained
        return SimpleNamespace(features=vgg.make_layers(vgg.cfgs["D"]))

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lpips_pkg.pretrained_networks.tv, "vgg16", features_only)
        return lpips_pkg.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()


@pytest.fixture(scope="module")
def reference_vgg_file(reference, tmp_path_factory):
    """The reference's trunk written in torchvision's layout (`features.N.*`), plus a classifier key."""
    state = {}
    for name, tensor in reference.net.state_dict().items():
        _slice, index, kind = name.split(".")  # slice1.0.weight -> features.0.weight
        state[f"features.{index}.{kind}"] = tensor.clone()
    state["classifier.0.bias"] = torch.zeros(4)  # ignored, as in the real torchvision file
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def tiny_lpips():
    torch.manual_seed(0)
    return LPIPS(random_weights=True)


# -- LPIPS -------------------------------------------------------------------------------------
def test_lpips_matches_the_lpips_package(reference, reference_vgg_file):
    lin_file = lpips_module.packaged_lin_weights()
    assert lin_file is not None and lin_file.name == "vgg.pth"
    ours = LPIPS(vgg_weights=reference_vgg_file, lin_weights=lin_file)
    x, y = images(3, 48, seed=1), images(3, 48, seed=2)
    with torch.no_grad():
        expected = reference(x, y).flatten()
        got = ours(x, y)
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # Without lin_weights the copy shipped in the lpips package is found on its own.
    default = LPIPS(vgg_weights=reference_vgg_file.parent)
    for ours_lin, lin in zip(default.lins, reference.lins):
        torch.testing.assert_close(ours_lin.weight, lin.model[-1].weight)


def test_lpips_taps_are_the_relu_outputs():
    features = lpips_module.vgg16_features()
    assert len(features) == 30
    assert all(isinstance(features[i], torch.nn.ReLU) for i in TAPS)
    assert all(isinstance(features[i + 1], torch.nn.MaxPool2d) for i in TAPS[:-1])


def test_lpips_is_a_frozen_differentiable_metric(tiny_lpips):
    x, y = images(2, seed=3), images(2, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(tiny_lpips(x, x), torch.zeros(2))
        torch.testing.assert_close(tiny_lpips(x, y), tiny_lpips(y, x))
        assert (tiny_lpips(x, y) > 0).all()
    assert not any(p.requires_grad for p in tiny_lpips.parameters())
    tiny_lpips.train()
    assert not any(m.training for m in tiny_lpips.modules())
    x = x.clone().requires_grad_(True)
    tiny_lpips(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_lpips.parameters())


def test_lpips_runs_in_float32_under_autocast(tiny_lpips):
    x, y = images(2, seed=5), images(2, seed=6)
    with torch.no_grad():
        exact = tiny_lpips(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = tiny_lpips(x.bfloat16(), y.bfloat16())
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, tiny_lpips(x.bfloat16().float(), y.bfloat16().float()))
    assert torch.allclose(mixed, exact, rtol=0.05)


def test_lpips_weights_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    lin_file = tmp_path / "vgg.pth"  # as shipped inside the lpips package
    lin_file.touch()
    monkeypatch.setattr(weights, "packaged_file", lambda package, path: lin_file if package == "lpips" else None)
    with pytest.raises(WeightsNotFound) as info:
        LPIPS()
    message = str(info.value)
    assert "\n" not in message
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--lpips-vgg-weights" in message
    assert "vgg.pth (" not in message  # the lin weights come with the lpips package
    monkeypatch.setattr(weights, "packaged_file", lambda package, path: None)
    with pytest.raises(WeightsNotFound, match=r"vgg16-397923af\.pth .*; vgg\.pth \(LPIPS v0\.1"):
        LPIPS()


def test_lpips_weights_from_the_hub_cache(tmp_path, monkeypatch, reference_vgg_file):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vgg16-397923af.pth").write_bytes(reference_vgg_file.read_bytes())
    model = LPIPS()
    expected = torch.load(reference_vgg_file, weights_only=True)["features.28.weight"]
    torch.testing.assert_close(model.features[28].weight, expected)


def test_lpips_wrong_files_are_one_line_errors(tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"features.0.weight": torch.zeros(8, 3, 3, 3)}, str(wrong))
    with pytest.raises(UserError, match=r"^--lpips-vgg-weights .*wrong\.safetensors: is not the torchvision VGG16 features: keys \d+ missing") as info:
        LPIPS(vgg_weights=wrong)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"^--lpips-vgg-weights .*nowhere: no such file"):
        LPIPS(vgg_weights=tmp_path / "nowhere")


# -- discriminator -----------------------------------------------------------------------------
def test_discriminator_architecture_matches_repae():
    torch.manual_seed(0)
    disc = NLayerDiscriminator()
    assert list(disc.state_dict()) == REPAE_DISC_KEYS
    assert sum(p.numel() for p in disc.parameters()) == 2_765_633
    assert all(isinstance(disc.main[i], torch.nn.BatchNorm2d) for i in (3, 6, 9))
    conv = disc.main[8].weight
    assert abs(conv.mean().item()) < 1e-3 and abs(conv.std().item() - 0.02) < 1e-3
    assert abs(disc.main[9].weight.mean().item() - 1.0) < 0.01
    with torch.no_grad():
        assert disc(images(2, 64)).shape == (2, 1, 6, 6)
        assert disc(images(1, 256)).shape == (1, 1, 30, 30)


def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0, 0.0])
    fake = torch.tensor([-2.0, -0.5, 1.0, 3.0])
    # relu(1 - real) = [0, .5, 2, 1] -> .875; relu(1 + fake) = [0, .5, 2, 4] -> 1.625
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.875 + 1.625))
    assert hinge_g_loss(fake).item() == pytest.approx(-0.375)


def test_discriminator_checkpoints_in_repae_layouts(tmp_path):
    torch.manual_seed(1)
    source = NLayerDiscriminator()
    state = source.state_dict()
    bare = tmp_path / "sdvae-f8d4-discriminator-ckpt.pt"  # REPA-E's released file: the bare state dict
    torch.save(state, bare)
    optimizer = torch.optim.AdamW(source.parameters(), lr=1e-4)
    full = tmp_path / "0050000.pt"  # REPA-E's training checkpoint
    torch.save({"model": {"x": torch.zeros(1)}, "ema": {"x": torch.zeros(1)}, "vae": {"y": torch.zeros(1)},
                "discriminator": state, "opt": {}, "opt_vae": {}, "opt_disc": optimizer.state_dict(),
                "args": argparse.Namespace(disc_learning_rate=1e-4), "steps": 50000}, full)
    wrapped = tmp_path / "ddp.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(wrapped))
    for path in (bare, full, wrapped):
        loaded = load_discriminator(path)
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(value, state[key])


def test_discriminator_wrong_checkpoints(tmp_path):
    small = tmp_path / "small.pt"
    torch.save(NLayerDiscriminator(ndf=32).state_dict(), small)
    no_disc = tmp_path / "sit.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "steps": 3}, no_disc)
    for path, pattern in ((small, r"is not an NLayerDiscriminator checkpoint .*of another shape \(e\.g\. main\.0\.weight"),
                          (no_disc, r"expected a discriminator state dict .*found model, steps"),
                          (tmp_path / "missing.pt", r"no such file")):
        with pytest.raises(UserError, match=r"^--disc-weights .*" + pattern) as info:
            load_discriminator(path)
        assert "\n" not in str(info.value)


# -- VAELoss -----------------------------------------------------------------------------------
class FixedPosterior:
    def __init__(self, kl):
        self._kl = kl

    def kl(self):
        return self._kl


def make_loss(tiny_lpips, **kwargs):
    torch.manual_seed(2)
    return VAELoss(tiny_lpips, NLayerDiscriminator(), **kwargs)


def test_vae_loss_terms_and_weights(tiny_lpips):
    loss_fn = make_loss(tiny_lpips, disc_start=10)
    x, x_hat = images(2, seed=7), images(2, seed=8).requires_grad_(True)
    posterior = FixedPosterior(torch.tensor([3.0e4, 5.0e4]))
    before = loss_fn.generator_loss(x, x_hat, posterior, step=9)
    assert set(before) == {"loss", "recon", "lpips", "kl", "gan", "gan_factor"}
    assert before["recon"].item() == pytest.approx((x - x_hat).abs().mean().item())
    assert before["lpips"].item() == pytest.approx(tiny_lpips(x, x_hat).mean().item())
    assert before["kl"].item() == pytest.approx(4.0e4)  # summed over C, H, W by .kl(), mean over the batch
    assert before["gan"].item() == 0 and before["gan_factor"].item() == 0
    assert before["loss"].item() == pytest.approx(before["recon"] + before["lpips"] + 1e-6 * 4.0e4)

    after = loss_fn.generator_loss(x, x_hat, posterior, step=10)
    with torch.no_grad():
        logits = loss_fn.discriminator(x_hat)  # train mode, as in the step (batch statistics)
    assert after["gan"].item() == pytest.approx(-logits.mean().item(), abs=1e-6)
    assert after["gan_factor"].item() == 1
    expected = after["recon"] + after["lpips"] + 1e-6 * after["kl"] + 0.1 * after["gan"]
    assert after["loss"].item() == pytest.approx(expected.item())
    after["loss"].backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    # The generator term moves the VAE only; the discriminator stays trainable afterwards.
    assert all(p.grad is None and p.requires_grad for p in loss_fn.discriminator.parameters())

    mse = make_loss(tiny_lpips, recon="mse", recon_weight=2.0, lpips_weight=0.0, kl_weight=0.0)
    out = mse.generator_loss(x, x_hat.detach(), posterior, step=0)
    assert out["recon"].item() == pytest.approx((x - x_hat).pow(2).mean().item())
    assert out["loss"].item() == pytest.approx(2.0 * out["recon"].item() + 0.1 * out["gan"].item())
    with pytest.raises(ValueError, match="recon must be one of l1, mse"):
        make_loss(tiny_lpips, recon="huber")


def test_discriminator_step(tiny_lpips):
    loss_fn = make_loss(tiny_lpips, disc_start=5)
    x, x_hat = images(2, seed=9), images(2, seed=10).requires_grad_(True)
    before = loss_fn.discriminator_loss(x, x_hat, step=4)
    assert before["loss"].item() == 0
    before["loss"].backward()  # every parameter still takes part (DDP), with zero gradient
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in loss_fn.discriminator.parameters())
    loss_fn.discriminator.zero_grad(set_to_none=True)

    out = loss_fn.discriminator_loss(x, x_hat, step=5)
    with torch.no_grad():
        real, fake = loss_fn.discriminator(x), loss_fn.discriminator(x_hat)
    hand = 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())
    assert out["loss"].item() == pytest.approx(hand.item(), rel=1e-5)
    assert out["logits_real"].item() == pytest.approx(real.mean().item(), rel=1e-5)
    assert out["logits_fake"].item() == pytest.approx(fake.mean().item(), rel=1e-5)
    out["loss"].backward()
    assert x_hat.grad is None  # reconstructions are detached for the discriminator step
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())
