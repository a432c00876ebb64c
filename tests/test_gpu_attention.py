"""xformers and SDPA give the same SiT attention on CUDA. Run on a GPU machine with the `cuda`
extra installed: `python -m pytest -m gpu -n 0 tests/test_gpu_attention.py`."""

import pytest
import torch

from sendvae_cli.generators.attention import attend, resolve_backend, xformers_available
from sendvae_cli.generators.sit import SiT, SiTBlock

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


def test_sit_xl_block_forward_and_backward_agree_across_backends():
    """At SiT-XL/1's width (1152, 16 heads of 72) on its 256 tokens, in bf16 autocast as train-sit
    runs, the two kernels give the same block output and the same gradients (input and every
    weight), to bf16's rounding."""
    torch.manual_seed(0)
    block = SiTBlock(1152, 16, 4.0, False, "xformers").cuda()
    with torch.no_grad():
        for p in block.parameters():  # non-zero gates, so attention reaches the output
            p.normal_(0, 0.02)
    x, c = torch.randn(8, 256, 1152, device="cuda"), torch.randn(8, 1152, device="cuda")
    probe = torch.randn(8, 256, 1152, device="cuda")  # a random projection: a gradient in every direction

    def run(backend):
        block.attn.backend = backend
        block.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = block(xi, c)
        (out.float() * probe).sum().backward()
        return {"output": out.detach().float(), "input": xi.grad,
                **{name: p.grad.float() for name, p in block.named_parameters()}}

    a, b = run("xformers"), run("sdpa")
    for name in b:
        relative = float((a[name] - b[name]).norm() / b[name].norm())
        assert relative < 2e-2, (name, relative)
