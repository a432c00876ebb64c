"""SiT: the flow-matching transformer of SiT / REPA, with REPA's projector heads.

One readable file in the spirit of DiT's models.py. A latent (B, C, H, W) is cut into p x p
patches, each patch becomes a token, tokens get fixed 2-D sin-cos positions, and a stack of
adaLN-Zero transformer blocks, conditioned on the flow time t and the class label, predicts the
velocity v = eps - x of the linear path x_t = (1 - t) x + t eps (t = 0 data, t = 1 noise).

REPA: the tokens after block `encoder_depth` (1-based) also go through one small MLP per
teacher ("projector"), whose outputs are pulled towards the teacher's patch tokens by the loss
in `sendvae_cli.flow.loss`. Projectors are used only in training; sampling ignores them.

Module names and parameter shapes are those of REPA's and REPA-E's models/sit.py
(`x_embedder.proj`, `pos_embed`, `t_embedder.mlp.{0,2}`, `y_embedder.embedding_table`,
`blocks.N.{attn.qkv, attn.q_norm, attn.k_norm, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}`,
`final_layer.{linear, adaLN_modulation.1}`, `projectors.K.{0,2,4}`), so their checkpoints load
with `load_state_dict` and no renaming (REPA-E adds latent statistics as `bn.*`, which
`export.import_repa_checkpoint` takes out).

Labels: `y` is a long tensor of class ids; id `num_classes` is the null class that classifier-
free guidance conditions on. Label dropout for CFG training is explicit and deterministic: the
caller passes `drop_labels` (a bool mask, e.g. from `label_drop_mask(batch, generator=g)`);
the model never draws random numbers in `forward`, in train mode or not.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sendvae_cli.generators.attention import BACKENDS, attend, check_backend
from sendvae_cli.generators.base import FlowGenerator
from sendvae_cli.generators.sizes import PROJECTOR_WIDTH, sit_sizes


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: shift and scale every token by per-sample vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#                         Fixed 2-D sine-cosine positions                       #
#################################################################################


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): sines of dim/2 geometric frequencies, then cosines."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width {dim} must be even")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid * grid, dim) float32 positions of a row-major token grid.

    The first half of the width encodes the column, the second half the row (MAE's and DiT's
    order, which their checkpoints' `pos_embed` holds).
    """
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


#################################################################################
#                    Embeddings: patches, flow time, class labels               #
#################################################################################


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, width): a p x p stride-p convolution, tokens row-major."""

    def __init__(self, in_channels: int, width: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> (B, width): 256 sinusoidal frequencies, then a 2-layer SiLU MLP."""

    def __init__(self, width: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, width), nn.SiLU(), nn.Linear(width, width))

    @staticmethod
    def sinusoids(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """(B,) -> (B, dim): cosines then sines of t times frequencies from 1 down to 1/max_period."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if dim % 2:
            embedding = F.pad(embedding, (0, 1))
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoids(t, self.frequencies).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class id -> (B, width). Row `num_classes` is the null class, present when the model is
    trained with label dropout (class_dropout > 0), as in REPA."""

    def __init__(self, num_classes: int, width: int, class_dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.has_null = class_dropout > 0
        self.embedding_table = nn.Embedding(num_classes + int(self.has_null), width)

    def forward(self, y: torch.Tensor, drop_labels: torch.Tensor | None = None) -> torch.Tensor:
        if drop_labels is not None:
            if not self.has_null:
                raise ValueError("this SiT was built with class_dropout=0: it has no null class to drop labels to")
            y = torch.where(drop_labels.to(torch.bool), torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


#################################################################################
#                                 Transformer blocks                            #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and optional QK-norm.

    QK-norm is a LayerNorm over each head's queries and keys (timm's `qk_norm`, which REPA uses).
    The kernel comes from `attention.attend` (xformers on CUDA when installed, else SDPA).
    """

    def __init__(self, width: int, heads: int, qk_norm: bool = False, backend: str = "auto"):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.backend = check_backend(backend)
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).unbind(2)  # each (B, N, H, D)
        out = attend(self.q_norm(q), self.k_norm(k), v, self.backend)
        return self.proj(out.reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """Pre-norm attention + MLP; the conditioning vector c sets shift, scale and gate of each
    (adaLN-Zero: the gates start at zero, so every block starts as the identity)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool, backend: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, qk_norm=qk_norm, backend=backend)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """Modulated LayerNorm, then a linear map of each token to its p * p * C patch values."""

    def __init__(self, width: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def check_sizes(input_size: int, patch_size: int, depth: int, encoder_depth: int, projector_dims: Sequence[int],
                num_classes: int) -> tuple[int, ...]:
    """The sizes a patch transformer (SiT, LightningDiT) refuses, as ValueErrors the trainer turns
    into one line; returns the projector widths as a tuple of ints."""
    if input_size % patch_size:
        raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
    projector_dims = tuple(int(d) for d in projector_dims)
    if projector_dims and not 1 <= encoder_depth <= depth:
        raise ValueError(f"encoder_depth {encoder_depth} must lie in 1..{depth} (the model's depth)")
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    return projector_dims


def projector(width: int, hidden: int, out: int) -> nn.Sequential:
    """REPA's projector: three linear layers with SiLU between, applied to each token."""
    return nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, out))


#################################################################################
#                                     The model                                 #
#################################################################################


class SiT(FlowGenerator):
    """A SiT velocity model on latents of shape (in_channels, input_size, input_size).

    `arch` holds the constructor keywords (JSON-serialisable) and rebuilds the same
    architecture: `SiT(**model.arch)`. The attention backend is a run-time choice, not part of
    `arch`; change it with `set_attention`.
    """

    offers_projections = True
    attention_backends = BACKENDS

    def __init__(self, *, input_size: int, in_channels: int, patch_size: int, depth: int, width: int, heads: int,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, class_dropout: float = 0.1, qk_norm: bool = False,
                 encoder_depth: int = 8, projector_dims: Sequence[int] = (), projector_width: int = PROJECTOR_WIDTH,
                 attention: str = "auto"):
        projector_dims = check_sizes(input_size, patch_size, depth, encoder_depth, projector_dims, num_classes)
        arch: dict[str, Any] = {
            "input_size": int(input_size), "in_channels": int(in_channels), "patch_size": int(patch_size),
            "depth": int(depth), "width": int(width), "heads": int(heads), "mlp_ratio": float(mlp_ratio),
            "num_classes": int(num_classes), "class_dropout": float(class_dropout), "qk_norm": bool(qk_norm),
            "encoder_depth": int(encoder_depth), "projector_dims": list(projector_dims),
            "projector_width": int(projector_width),
        }
        super().__init__(input_size=input_size, in_channels=in_channels, num_classes=num_classes, arch=arch)
        self.patch_size, self.class_dropout = patch_size, class_dropout
        self.encoder_depth, self.projector_dims = encoder_depth, projector_dims
        self.grid = input_size // patch_size

        self.x_embedder = PatchEmbed(in_channels, width, patch_size)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(num_classes, width, class_dropout)
        # Fixed, not learned; kept in the state dict (as REPA's checkpoints hold it).
        self.register_buffer("pos_embed", sincos_2d(width, self.grid).unsqueeze(0), persistent=True)
        self.blocks = nn.ModuleList(SiTBlock(width, heads, mlp_ratio, qk_norm, attention) for _ in range(depth))
        self.projectors = nn.ModuleList(projector(width, projector_width, d) for d in projector_dims)
        self.final_layer = FinalLayer(width, patch_size, in_channels)
        self.initialize_weights()

    # -- initialisation (DiT's) ------------------------------------------------------
    def initialize_weights(self) -> None:
        """Xavier-uniform linears with zero biases; adaLN gates and the output layer at zero.

        Draws from torch's global generator: seed it (torch.manual_seed) for reproducible inits.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # The patch convolution is initialised like the linear map it is.
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- run-time settings ---------------------------------------------------------------
    def set_attention(self, backend: str) -> "SiT":
        """Use attention backend "auto", "xformers" or "sdpa" (see `generators.attention`)."""
        check_backend(backend)
        for block in self.blocks:
            block.attn.backend = backend
        return self

    @property
    def attention(self) -> str:
        return self.blocks[0].attn.backend if len(self.blocks) else "auto"

    @property
    def null_class(self) -> int | None:
        """The label id that means "no class" (for CFG), or None when the model has none."""
        return self.num_classes if self.y_embedder.has_null else None

    def projection_grid(self) -> tuple[int, int]:
        return (self.grid, self.grid)

    def label_drop_mask(self, batch: int, *, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
        """A (batch,) bool mask, True with probability `class_dropout`: labels to drop in training.

        Drawn on the generator's device (CPU by default) and moved to `device`, so the same
        generator state gives the same mask on any device.
        """
        gen_device = generator.device if generator is not None else "cpu"
        mask = torch.rand(batch, generator=generator, device=gen_device) < self.class_dropout
        return mask.to(device) if device is not None else mask

    # -- forward -------------------------------------------------------------------------
    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p * p * C) tokens -> (B, C, H, W); each token's values are ordered (row, col, channel)."""
        B, p, c, g = x.shape[0], self.patch_size, self.in_channels, self.grid
        x = x.reshape(B, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, c, g * p, g * p)

    def _run(self, x, t, y, drop_labels, project: bool):
        if x.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(f"SiT expects latents of shape (B, {self.in_channels}, {self.input_size}, "
                             f"{self.input_size}); got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (B, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, drop_labels)  # (B, D)
        projected: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, c)
            if project and i == self.encoder_depth:
                projected = [head(tokens) for head in self.projectors]
        v = self.unpatchify(self.final_layer(tokens, c))
        return v, projected

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *,
                drop_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (B, C, H, W) at latents x (B, C, H, W), flow time t (B,) or scalar in [0, 1],
        labels y (B,) long (num_classes = null). `drop_labels` (B,) bool replaces those labels by null."""
        return self._run(x, t, y, drop_labels, project=False)[0]

    def forward_with_projections(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *,
                                 drop_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(velocity, [one (B, T, teacher_width) tensor per projector]) with T = (input_size / patch_size)^2;
        the projections are of the tokens after block `encoder_depth`."""
        return self._run(x, t, y, drop_labels, project=True)


#################################################################################
#                                   SiT configs                                 #
#################################################################################


def build_sit(name: str, **kwargs: Any) -> SiT:
    """A named SiT ('SiT-XL/1', 'sit-b/2', 'SiT-tiny/1', ...); kwargs override or complete
    the architecture (input_size and in_channels are always needed)."""
    key = SIT_ALIASES.get(name, name)
    if key not in SIT_NAMES:
        raise KeyError(f"unknown SiT {name!r}; known: {', '.join(SIT_NAMES)}")
    return SiT(**{**SIT_NAMES[key], **kwargs})


SIT_NAMES: dict[str, dict[str, int]] = sit_sizes()
SIT_ALIASES = {name.lower(): name for name in SIT_NAMES}
SIT_MODELS = {name: partial(build_sit, name) for name in SIT_NAMES}


__all__ = ["SiT", "SIT_MODELS", "SIT_NAMES", "build_sit", "sincos_2d", "modulate"]
