"""AdamW as every trainer here builds it: fused where torch has the kernel.

The fused kernel makes one pass over the parameters instead of about ten, the same update rule;
on a CPU it halves the optimizer's share of a small model's step (the probe's linear layer, a
SiT-mini). It exists on CUDA, and on CPU from torch 2.4; elsewhere the plain loop is used.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


def adamw(parameters: Iterable[torch.nn.Parameter], device: torch.device, **options: Any) -> torch.optim.Optimizer:
    parameters = list(parameters)
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(parameters, fused=True, **options)
        except (RuntimeError, ValueError):  # an older torch without the CPU kernel
            pass
    return torch.optim.AdamW(parameters, **options)
