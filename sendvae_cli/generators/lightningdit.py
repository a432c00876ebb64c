"""LightningDiT: hustvl's DiT with SwiGLU, RMSNorm, 2-D rotary positions and optional QK-norm.

One readable file beside `sit.py`, whose embedders and final layer it shares. What differs from SiT:

- the MLP is SwiGLU (`mlp.w12` makes gate and value in one matrix, `mlp.w3` maps back), with
  hidden width int(2/3 * mlp_ratio * width);
- the pre-norms are RMSNorm with a learned scale (`norm1.weight`, `norm2.weight`,
  `final_layer.norm_final.weight`);
- attention adds 2-D rotary position embeddings (EVA-02's "fast" form) to queries and keys on top
  of the fixed sin-cos `pos_embed`; QK-norm (RMSNorm per head) is optional and off in the release;
- `learn_sigma` is off: the output has the input's channels.

Time convention: hustvl's code runs the path the other way round, s = 0 noise and s = 1 data,
x_s = s x + (1 - s) eps, and the network predicts u = x - eps. This module keeps their network
as it is (so their checkpoints load with `load_state_dict` and no renaming, `feat_rope.*`
buffers included) and converts at its boundary: `forward(x, t, y)` feeds the network s = 1 - t
and returns v = -u, the velocity of the toolkit's convention (docs/sit.md).

REPA is optional, as for SiT: with `projector_dims` the tokens after block `encoder_depth` go
through one projector per teacher (module names `projectors.K.{0,2,4}`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sendvae_cli.generators.attention import BACKENDS, attend, check_backend
from sendvae_cli.generators.base import FlowGenerator
from sendvae_cli.generators.sit import (LabelEmbedder, PatchEmbed, TimestepEmbedder, check_sizes, projector,
                                        sincos_2d)
from sendvae_cli.generators.sizes import PROJECTOR_WIDTH

#################################################################################
#                        Normalisation, MLP, rotary positions                   #
#################################################################################


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the statistics in float32 whatever the input's dtype."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Mlp(nn.Module):
    """The GELU MLP of DiT, for models built with swiglu=False (timm's module names fc1, fc2)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., D): each adjacent pair (a, b) becomes (-b, a)."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-b, a), dim=-1).flatten(-2)


class Rope2d(nn.Module):
    """2-D rotary embedding of a row-major grid x grid token layout, over the whole head width.

    The first half of a head's channels rotates with the token's row, the second half with its
    column; within a half, the channel pairs (2i, 2i+1) turn by angle position * 10000^(-4i / D).
    The tables are buffers kept in the state dict, as in hustvl's checkpoints.
    """

    def __init__(self, head_dim: int, grid: int):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"rotary positions need a head width divisible by 4; got {head_dim}")
        half = head_dim // 2
        freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
        positions = torch.arange(grid) / grid * grid  # float positions, computed as hustvl's tables are
        angles = torch.einsum("i,f->if", positions, freqs).repeat_interleave(2, dim=-1)  # (grid, half)
        rows = angles[:, None, :].expand(grid, grid, half)
        cols = angles[None, :, :].expand(grid, grid, half)
        table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, H, D) -> the same, rotated by each token's position (in the tables' precision,
        returned in x's dtype, so that bf16 queries stay bf16 for the attention kernel)."""
        cos, sin = self.freqs_cos[:, None, :], self.freqs_sin[:, None, :]
        return (x * cos + rotate_pairs(x) * sin).to(x.dtype)


#################################################################################
#                                 Transformer blocks                            #
#################################################################################


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """adaLN, with the shift left out in the `wo_shift` variant."""
    x = x * (1 + scale.unsqueeze(1))
    return x if shift is None else x + shift.unsqueeze(1)


class Attention(nn.Module):
    """Self-attention with a fused qkv projection, optional QK-norm and 2-D rotary positions."""

    def __init__(self, width: int, heads: int, *, qk_norm: bool, rmsnorm: bool, backend: str):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.backend = check_backend(backend)
        self.qkv = nn.Linear(width, 3 * width)
        norm = (lambda: RMSNorm(self.head_dim)) if rmsnorm else (lambda: nn.LayerNorm(self.head_dim))
        self.q_norm = norm() if qk_norm else nn.Identity()
        self.k_norm = norm() if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, rope: Rope2d | None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).unbind(2)  # each (B, N, H, D)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        return self.proj(attend(q, k, v, self.backend).reshape(B, N, C))


class LightningDiTBlock(nn.Module):
    """Pre-norm attention + MLP under adaLN-Zero (shift, scale, gate; no shift with wo_shift)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, *, qk_norm: bool, swiglu: bool, rmsnorm: bool,
                 wo_shift: bool, backend: str):
        super().__init__()
        norm = (lambda: RMSNorm(width)) if rmsnorm else (lambda: nn.LayerNorm(width, elementwise_affine=False, eps=1e-6))
        self.norm1, self.norm2 = norm(), norm()
        self.attn = Attention(width, heads, qk_norm=qk_norm, rmsnorm=rmsnorm, backend=backend)
        hidden = int(width * mlp_ratio)
        self.mlp = SwiGLU(width, int(2 / 3 * hidden)) if swiglu else Mlp(width, hidden)
        self.wo_shift = wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, (4 if wo_shift else 6) * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Rope2d | None) -> torch.Tensor:
        chunks = self.adaLN_modulation(c).chunk(4 if self.wo_shift else 6, dim=-1)
        if self.wo_shift:
            (scale_a, gate_a, scale_m, gate_m), shift_a, shift_m = chunks, None, None
        else:
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = chunks
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    def __init__(self, width: int, patch_size: int, out_channels: int, rmsnorm: bool):
        super().__init__()
        self.norm_final = RMSNorm(width) if rmsnorm else nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#################################################################################
#                                     The model                                 #
#################################################################################


class LightningDiT(FlowGenerator):
    """A LightningDiT velocity model on latents of shape (in_channels, input_size, input_size).

    The defaults of the switches are those of hustvl's released VA-VAE models (SwiGLU, RoPE and
    RMSNorm on, QK-norm and wo_shift off). `LightningDiT(**model.arch)` rebuilds the architecture.
    """

    offers_projections = True
    attention_backends = BACKENDS

    def __init__(self, *, input_size: int, in_channels: int, patch_size: int, depth: int, width: int, heads: int,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, class_dropout: float = 0.1, qk_norm: bool = False,
                 swiglu: bool = True, rope: bool = True, rmsnorm: bool = True, wo_shift: bool = False,
                 encoder_depth: int = 8, projector_dims: Sequence[int] = (), projector_width: int = PROJECTOR_WIDTH,
                 attention: str = "auto"):
        projector_dims = check_sizes(input_size, patch_size, depth, encoder_depth, projector_dims, num_classes)
        arch: dict[str, Any] = {
            "input_size": int(input_size), "in_channels": int(in_channels), "patch_size": int(patch_size),
            "depth": int(depth), "width": int(width), "heads": int(heads), "mlp_ratio": float(mlp_ratio),
            "num_classes": int(num_classes), "class_dropout": float(class_dropout), "qk_norm": bool(qk_norm),
            "swiglu": bool(swiglu), "rope": bool(rope), "rmsnorm": bool(rmsnorm), "wo_shift": bool(wo_shift),
            "encoder_depth": int(encoder_depth), "projector_dims": list(projector_dims),
            "projector_width": int(projector_width),
        }
        super().__init__(input_size=input_size, in_channels=in_channels, num_classes=num_classes, arch=arch)
        self.patch_size, self.grid = patch_size, input_size // patch_size
        self.encoder_depth = encoder_depth

        self.x_embedder = PatchEmbed(in_channels, width, patch_size)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(num_classes, width, class_dropout)
        self.register_buffer("pos_embed", sincos_2d(width, self.grid).unsqueeze(0), persistent=True)
        self.feat_rope = Rope2d(width // heads, self.grid) if rope else None
        self.blocks = nn.ModuleList(
            LightningDiTBlock(width, heads, mlp_ratio, qk_norm=qk_norm, swiglu=swiglu, rmsnorm=rmsnorm,
                              wo_shift=wo_shift, backend=attention) for _ in range(depth))
        self.projectors = nn.ModuleList(projector(width, projector_width, d) for d in projector_dims)
        self.final_layer = FinalLayer(width, patch_size, in_channels, rmsnorm)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (as hustvl's): Xavier linears, zero adaLN gates and output layer.
        Draws from torch's global generator."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [block.adaLN_modulation[-1] for block in self.blocks] + [
                self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- the contract ----------------------------------------------------------------------
    @property
    def null_class(self) -> int | None:
        return self.num_classes if self.y_embedder.has_null else None

    def projection_grid(self) -> tuple[int, int]:
        return (self.grid, self.grid)

    def set_attention(self, backend: str) -> "LightningDiT":
        check_backend(backend)
        for block in self.blocks:
            block.attn.backend = backend
        return self

    @property
    def attention(self) -> str:
        return self.blocks[0].attn.backend if len(self.blocks) else "auto"

    # -- forward -------------------------------------------------------------------------
    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p * p * C) -> (B, C, H, W); each token's values are ordered (row, col, channel)."""
        B, p, c, g = x.shape[0], self.patch_size, self.in_channels, self.grid
        return x.reshape(B, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(B, c, g * p, g * p)

    def network(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor,
                project: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """hustvl's forward: u = x - eps at their time s (0 noise, 1 data); and the projections."""
        if x.shape[1:] != self.latent_shape:
            raise ValueError(f"LightningDiT expects latents of shape (B, {self.in_channels}, {self.input_size}, "
                             f"{self.input_size}); got {tuple(x.shape)}")
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(s) + self.y_embedder(y)
        projected: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, c, self.feat_rope)
            if project and i == self.encoder_depth:
                projected = [head(tokens) for head in self.projectors]
        return self.unpatchify(self.final_layer(tokens, c)), projected

    def _their_time(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        return 1 - (t.expand(x.shape[0]) if t.ndim == 0 else t)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Velocity v = eps - x (the convention of docs/sit.md) at flow time t (0 data, 1 noise)."""
        return -self.network(x, self._their_time(x, t), y)[0]

    def forward_with_projections(self, x: torch.Tensor, t: torch.Tensor,
                                 y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        u, projected = self.network(x, self._their_time(x, t), y, project=True)
        return -u, projected


__all__ = ["LightningDiT", "RMSNorm", "Rope2d", "SwiGLU"]
