"""The SiT training loss: velocity MSE plus the weighted REPA alignment term.

    loss = mean((v_pred - v_target)^2) + proj_weight * REPA
    REPA = mean over teachers, samples and tokens of -cos(projector output, teacher token)

This is REPA's reduction: their per-sample loss is the mean over tokens of the negative cosine,
summed over teachers and samples and divided by (teachers * batch). Both terms are computed in
float32 with autocast off, whatever precision the model ran in: the normalisation of small
bf16/fp16 vectors and the mean over many tokens are where low precision hurts. With
`proj_weight == 0` the REPA term is skipped and no teacher tokens are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F



class ShapeMismatch(ValueError):
    """A generator's outputs do not have the shapes the objective needs (its contract, broken)."""

def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def velocity_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element, as a float32 scalar."""
    if pred.shape != target.shape:
        raise ShapeMismatch(f"velocity prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    with _no_autocast(pred.device):
        return (pred.float() - target.float()).pow(2).mean()


def negative_cosine(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over samples and tokens of -cos between (B, N, D) projector outputs and teacher tokens."""
    if projected.shape != teacher.shape:
        raise ShapeMismatch(f"REPA: projector output {tuple(projected.shape)} and teacher tokens "
                         f"{tuple(teacher.shape)} differ in shape (tokens and width must match)")
    with _no_autocast(projected.device):
        a = F.normalize(projected.float(), dim=-1)
        b = F.normalize(teacher.float(), dim=-1)
        return -(a * b).sum(dim=-1).mean()


def repa_loss(projected: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor]) -> torch.Tensor:
    """REPA's alignment term: the negative cosine averaged over teachers (one projector each)."""
    if len(projected) != len(teachers) or not projected:
        raise ShapeMismatch(f"REPA: {len(projected)} projector outputs for {len(teachers)} teachers; "
                         "the model needs one projector per teacher")
    return torch.stack([negative_cosine(p, z) for p, z in zip(projected, teachers)]).mean()


@dataclass
class FlowLoss:
    """float32 scalars: `total` to backpropagate, its parts for logging (`repa` None when off)."""

    total: torch.Tensor
    velocity: torch.Tensor
    repa: torch.Tensor | None


def flow_loss(pred: torch.Tensor, target: torch.Tensor, projected: Sequence[torch.Tensor] = (),
              teachers: Sequence[torch.Tensor] = (), *, proj_weight: float = 0.5) -> FlowLoss:
    """Velocity MSE + proj_weight * REPA. With proj_weight 0, `projected` and `teachers` are ignored."""
    mse = velocity_mse(pred, target)
    if proj_weight == 0:
        return FlowLoss(total=mse, velocity=mse, repa=None)
    repa = repa_loss(projected, teachers)
    return FlowLoss(total=mse + proj_weight * repa, velocity=mse, repa=repa)


__all__ = ["velocity_mse", "negative_cosine", "repa_loss", "FlowLoss", "flow_loss"]
