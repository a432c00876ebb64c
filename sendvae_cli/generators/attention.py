"""Which attention kernel runs: xformers' memory-efficient attention on CUDA, PyTorch SDPA otherwise.

xformers comes with the `cuda` extra (`pip install sendvae[cuda]`). Both kernels compute the same
softmax(q k^T / sqrt(d)) v; they differ only in speed and memory on a GPU, and by rounding.

Tensors are laid out (batch, tokens, heads, head_dim) — xformers' native layout, and what a fused
qkv projection reshapes to without a copy. SDPA wants heads before tokens, so its path transposes.

Backend names: "auto" (xformers when the tensors are on CUDA and xformers imports, else SDPA),
"xformers" (an error when it cannot run) and "sdpa".
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "xformers", "sdpa")


@functools.lru_cache(maxsize=1)
def xformers_available() -> bool:
    """True when `xformers.ops.memory_efficient_attention` imports (it is looked up once)."""
    try:
        from xformers.ops import memory_efficient_attention  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken xformers install is the same as none
        return False
    return True


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The kernel ("xformers" or "sdpa") that `backend` means for tensors on `device`.

    The trainer records this name in its config.json and run log.
    """
    check_backend(backend)
    on_cuda = torch.device(device).type == "cuda"
    if backend == "sdpa":
        return "sdpa"
    if backend == "xformers":
        if not on_cuda:
            raise ValueError("attention backend 'xformers' needs CUDA tensors; use 'sdpa' or 'auto' on "
                             f"{torch.device(device).type}")
        if not xformers_available():
            raise ValueError("attention backend 'xformers' asked for, but xformers is not installed "
                             "(pip install 'sendvae[cuda]')")
        return "xformers"
    return "xformers" if on_cuda and xformers_available() else "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention over (B, N, H, D) tensors; returns (B, N, H, D)."""
    if resolve_backend(backend, q.device) == "xformers":
        from xformers.ops import memory_efficient_attention

        return memory_efficient_attention(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


__all__ = ["BACKENDS", "xformers_available", "check_backend", "resolve_backend", "attend"]
