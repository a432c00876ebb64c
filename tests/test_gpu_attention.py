"""xformers and SDPA give the same SiT attention on CUDA. Run on a GPU machine with the `cuda`
extra installed: `python -m pytest -m gpu -n 0 tests/test_gpu_attention.py`."""

import pytest
import torch

from sendvae_cli.generators.attention import attend, resolve_backend, xformers_available
from sendvae_cli.generators.sit import SiT

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def needs_cuda_and_xformers():
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    if not xformers_available():
        pytest.fail("the attention gpu test needs xformers: pip install 'sendvae[cuda]'")


def test_auto_picks_xformers_on_cuda():
    assert resolve_backend("auto", "cuda") == "xformers"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_xformers_and_sdpa_agree(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    # SiT-XL/1 on f16 latents: 256 tokens, 16 heads of 72.
    q, k, v = (torch.randn(4, 256, 16, 72, generator=g, device="cuda", dtype=dtype) for _ in range(3))
    a, b = attend(q, k, v, "xformers"), attend(q, k, v, "sdpa")
    reference = attend(q.float(), k.float(), v.float(), "sdpa")
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    assert (a.float() - reference).abs().max() < tol and (b.float() - reference).abs().max() < tol
    assert (a.float() - b.float()).abs().max() < tol


def test_sit_forward_agrees_across_backends():
    torch.manual_seed(0)
    model = SiT(input_size=16, in_channels=32, patch_size=1, depth=2, width=128, heads=2, num_classes=10,
                encoder_depth=1, projector_dims=[64]).cuda()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    x, t, y = torch.randn(4, 32, 16, 16, device="cuda"), torch.rand(4, device="cuda"), torch.arange(4, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a = model.set_attention("xformers")(x, t, y).float()
        b = model.set_attention("sdpa")(x, t, y).float()
    assert torch.allclose(a, b, atol=3e-2, rtol=3e-2)
    assert (a - b).abs().mean() < 3e-3
