"""The generator contract: what `train-sit`, `sample` and the training preview ask of a flow model.

A generator is a torch module that predicts the velocity v = eps - x of the linear path
x_t = (1 - t) x + t eps (t = 0 data, t = 1 noise; docs/sit.md) for latents x, flow times t
and class labels y. Built-in families (SiT, LightningDiT) and plugins subclass `FlowGenerator`;
the trainer and the samplers use nothing but what is declared here, so a plugin that implements
this class trains, exports, resumes and samples like a built-in one.

What a subclass provides:

- `__init__` calls `super().__init__(input_size=..., in_channels=..., num_classes=..., arch=...)`.
  `arch` is the JSON-serialisable dict of constructor keywords that rebuilds the same
  architecture: the export records it, and `sample` calls `spec.build(**arch)`.
- `forward(x, t, y) -> v`: x (B, C, H, W), t (B,) in [0, 1], y (B,) long; label `null_class`
  means "no class" (the condition classifier-free guidance compares against).
- Optionally REPA: set `offers_projections = True`, accept `projector_dims` (one teacher width
  per projector) in the constructor, and implement `forward_with_projections` and
  `projection_grid`. A generator without them trains with `--proj-weight 0`.
- Optionally `attention_backends`: the kernels `set_attention` may choose (`--attention`).

Label dropout for CFG training is the trainer's business: it replaces dropped labels by
`null_class` before calling `forward`, so a generator never draws random numbers.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, ClassVar, Mapping

import torch
from torch import nn


class FlowGenerator(nn.Module, metaclass=ABCMeta):
    """Base class of every generator (see the module docstring for the contract)."""

    # True when the model takes `projector_dims` and implements forward_with_projections (REPA).
    offers_projections: ClassVar[bool] = False
    # Attention kernels `set_attention` accepts; empty when the model has no such choice.
    attention_backends: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, input_size: int, in_channels: int, num_classes: int, arch: Mapping[str, Any]):
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be 0 or more; got {num_classes}")
        self.input_size, self.in_channels, self.num_classes = int(input_size), int(in_channels), int(num_classes)
        self.arch: dict[str, Any] = dict(arch)

    @abstractmethod
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Velocity (B, C, H, W) at latents x (B, C, H, W), flow time t (B,), labels y (B,) long."""

    @property
    def null_class(self) -> int | None:
        """The label that means "no class" (CFG's unconditional branch, unconditional training),
        or None when the model has none. By default one label past the classes."""
        return self.num_classes

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents the model takes."""
        return (self.in_channels, self.input_size, self.input_size)

    # -- REPA (only when offers_projections) ---------------------------------------------------
    def forward_with_projections(self, x: torch.Tensor, t: torch.Tensor,
                                 y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(velocity, [one (B, T, teacher_width) tensor per entry of projector_dims]), T the tokens
        of `projection_grid`, row-major."""
        raise NotImplementedError(f"{type(self).__name__} offers no REPA projections")

    def projection_grid(self) -> tuple[int, int]:
        """(rows, columns) of the projected token grid; must equal the teacher's patch grid."""
        raise NotImplementedError(f"{type(self).__name__} offers no REPA projections")

    # -- attention kernel (only when attention_backends) ---------------------------------------
    def set_attention(self, backend: str) -> "FlowGenerator":
        raise ValueError(f"{type(self).__name__} has no choice of attention kernel")

    @property
    def attention(self) -> str | None:
        """The attention backend in use, None when the model has no such choice."""
        return None


__all__ = ["FlowGenerator"]
