"""The Send-VAE mapper and alignment loss."""

import pytest
import torch

from sendvae_cli.vae.mapper import Mapper, alignment_loss, describe_grid_mismatch, mapper_patch_size, sincos_2d


def test_mapper_shapes_and_paper_sizes():
    mapper = Mapper(latent_channels=32, teacher_width=768, patch_size=1, depth=1)
    assert mapper.blocks[0].attn.num_heads == 12  # width / 64
    z = torch.randn(2, 32, 16, 16)
    assert mapper(z).shape == (2, 256, 768)
    f8 = Mapper(latent_channels=4, teacher_width=1024, patch_size=2, depth=1)
    assert f8.blocks[0].attn.num_heads == 16
    assert f8(torch.randn(2, 4, 32, 32)).shape == (2, 256, 1024)  # SD-VAE 32x32 -> 16x16 grid
    projector = [m for m in mapper.projector if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in projector] == [(768, 2048), (2048, 2048), (2048, 768)]
    assert len(Mapper(8, 64, depth=0).blocks) == 0


def test_noise_injection_only_in_training_and_norm_is_not_affine():
    mapper = Mapper(latent_channels=8, teacher_width=64, depth=1)
    assert mapper.norm.affine is False and mapper.norm.eps == 1e-4
    z = torch.randn(4, 8, 4, 4) * 3 + 1
    mapper.eval()
    assert torch.equal(mapper(z), mapper(z))  # deterministic without noise
    mapper.train()
    torch.manual_seed(0)
    a = mapper(z)
    torch.manual_seed(1)
    b = mapper(z)
    assert not torch.allclose(a, b)
    quiet = Mapper(latent_channels=8, teacher_width=64, depth=1, noise=False).train()
    torch.manual_seed(0)
    c = quiet(z)
    torch.manual_seed(1)
    assert torch.allclose(c, quiet(z), atol=1e-6)


def test_noise_mix_follows_the_formula():
    mapper = Mapper(latent_channels=2, teacher_width=8)
    z = torch.ones(3, 2, 2, 2)
    torch.manual_seed(5)
    mixed = mapper.inject_noise(z)
    torch.manual_seed(5)
    alpha = torch.rand(3, 1, 1, 1)
    eps = torch.randn(3, 2, 2, 2)
    assert torch.allclose(mixed, (1 - alpha) * eps + alpha * z)


def test_alignment_loss_values_and_fp32_under_autocast():
    x = torch.randn(2, 5, 16)
    assert alignment_loss(x, x).abs() < 1e-6
    assert torch.isclose(alignment_loss(x, -x), torch.tensor(2.0))
    assert torch.isclose(alignment_loss(x, 3 * x), torch.tensor(0.0), atol=1e-6)  # scale-free
    expected = 1 - torch.nn.functional.cosine_similarity(x, x.flip(0), dim=-1).mean()
    assert torch.isclose(alignment_loss(x, x.flip(0)), expected, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = alignment_loss(x.bfloat16() * 1e3, x.bfloat16() * 1e3)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    with pytest.raises(ValueError):
        alignment_loss(torch.randn(2, 4, 8), torch.randn(2, 5, 8))


def test_sincos_and_grid_helpers():
    pos = sincos_2d(16, 3, 4)
    assert pos.shape == (12, 16)
    assert torch.allclose(pos[0, 0::8][:1], torch.zeros(1))  # sin(0) = 0 at the origin
    assert mapper_patch_size(16) == 1 and mapper_patch_size(8) == 2
    message = describe_grid_mismatch((32, 32), 1, (16, 16), 8)
    assert "--mapper-patch 2" in message and "32x32" in message and "16x16" in message
