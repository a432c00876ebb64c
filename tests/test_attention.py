"""The attention backend choice on CPU (the xformers comparison is in test_gpu_attention.py)."""

import pytest
import torch

from sendvae_cli.generators import attention
from sendvae_cli.generators.attention import attend, resolve_backend
from sendvae_cli.generators.sit import SiT


def test_sdpa_path_is_plain_softmax_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 8, generator=g) for _ in range(3))  # (B, N, H, D)
    weights = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / 8 ** 0.5, dim=-1)
    expected = torch.einsum("bhnm,bmhd->bnhd", weights, v)
    assert torch.allclose(attend(q, k, v, "sdpa"), expected, atol=1e-6)
    assert torch.allclose(attend(q, k, v, "auto"), expected, atol=1e-6)


def test_backend_names(monkeypatch):
    assert resolve_backend("auto", "cpu") == "sdpa" and resolve_backend("sdpa", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_backend("xformers", "cpu")
    with pytest.raises(ValueError, match="expected one of auto, xformers, sdpa"):
        resolve_backend("flash", "cpu")
    monkeypatch.setattr(attention, "xformers_available", lambda: False)
    assert resolve_backend("auto", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="not installed"):
        resolve_backend("xformers", "cuda")
    monkeypatch.setattr(attention, "xformers_available", lambda: True)
    assert resolve_backend("auto", "cuda") == "xformers" and resolve_backend("auto", "cpu") == "sdpa"


def test_model_switches_backend_without_changing_arch():
    model = SiT(input_size=4, in_channels=4, patch_size=1, depth=2, width=32, heads=2, num_classes=3,
                attention="sdpa")
    assert model.attention == "sdpa" and "attention" not in model.arch
    model.set_attention("auto")
    assert all(block.attn.backend == "auto" for block in model.blocks)
    with pytest.raises(ValueError):
        model.set_attention("flash")
