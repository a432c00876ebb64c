"""Exponential moving average of a model's parameters (buffers are copied).

The decay warms up: at optimizer step t it is min(decay, (1 + t) / (10 + t)), so the average
spans about the last tenth of training until it reaches `decay`. A plain 0.999 average after
1,200 steps still holds 30% of the random initial weights (0.999 ** 1200), and a short run's
samples come out as that blend; at the paper's length (4M steps at 0.9999) the warm-up has
long washed out and the average is the plain one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def warmed_up_decay(decay: float, step: int) -> float:
    """The decay used for the update after optimizer step `step` (0-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in `model` after optimizer step `step` (0-based): a function of the step alone,
        so a resumed run averages exactly as an uninterrupted one."""
        weight = 1.0 - warmed_up_decay(self.decay, step)
        # One multi-tensor op instead of one lerp per parameter (the same arithmetic, and a tenth
        # of a small model's CPU step saved).
        torch._foreach_lerp_(list(self.shadow.parameters()), [p.detach() for p in model.parameters()], weight)
        for ema_b, b in zip(self.shadow.buffers(), model.buffers()):
            ema_b.copy_(b)
