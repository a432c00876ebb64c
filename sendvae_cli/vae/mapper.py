"""The Send-VAE mapper: from a (noised) VAE latent to the teacher's patch tokens.

    z  ──BatchNorm (non-affine)──► ẑ ──noise: (1-α)·ε + α·ẑ──► patch embed ──+ 2-D sin-cos──►
       ViT block × depth ──► MLP projector (w → 2048 → SiLU → 2048 → SiLU → D_teacher) ──► h(z)

    L_align = 1 - mean over patches of cos(h(z)[n], f(x)[n])

The mapper exists only during VAE training: it gives the alignment a non-linear path to the
teacher, so the latent keeps the detail a linear map (VA-VAE) would collapse, and noise
injection (α ~ U(0, 1) once per sample) makes the alignment hold for noisy latents as the
diffusion model will see them. It is dropped after training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
#                                   Position embedding
# --------------------------------------------------------------------------------------------


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (rows*cols, dim), as in MAE / DiT."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij")
    parts = []
    for grid in (xs, ys):  # first half encodes the column, second half the row
        angles = grid.reshape(-1, 1) * omega.reshape(1, -1)
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


# --------------------------------------------------------------------------------------------
#                                        Mapper
# --------------------------------------------------------------------------------------------


class Mapper(nn.Module):
    def __init__(self, latent_channels: int, teacher_width: int, *, patch_size: int = 1, depth: int = 1,
                 width: int | None = None, heads: int | None = None, projector_dim: int = 2048,
                 noise: bool = True):
        super().__init__()
        from timm.models.vision_transformer import Block

        width = width or teacher_width
        self.patch_size = patch_size
        self.width = width
        self.noise = noise
        # Per-channel normalisation without learned scale: the noise mix below assumes unit
        # variance latents, whatever the VAE's own scale (eps 1e-4 as a fixed decision).
        self.norm = nn.BatchNorm2d(latent_channels, affine=False, eps=1e-4)
        self.patch_embed = nn.Conv2d(latent_channels, width, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(
            Block(width, num_heads=heads or max(1, width // 64), mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)
        )
        self.projector = nn.Sequential(
            nn.Linear(width, projector_dim), nn.SiLU(),
            nn.Linear(projector_dim, projector_dim), nn.SiLU(),
            nn.Linear(projector_dim, teacher_width),
        )
        self._pos_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def grid(self, latent_rows: int, latent_cols: int) -> tuple[int, int]:
        return latent_rows // self.patch_size, latent_cols // self.patch_size

    def position(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        key = (rows, cols, device)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_2d(self.width, rows, cols).to(device)
        return self._pos_cache[key]

    def inject_noise(self, z: torch.Tensor) -> torch.Tensor:
        """z_t = (1 - α)·ε + α·z with α ~ U(0, 1) drawn once per sample."""
        alpha = torch.rand(z.shape[0], 1, 1, 1, device=z.device, dtype=z.dtype)
        return (1 - alpha) * torch.randn_like(z) + alpha * z

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.norm(z)
        if self.noise and self.training:
            z = self.inject_noise(z)
        x = self.patch_embed(z)  # (B, width, rows, cols)
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.position(rows, cols, x.device)
        for block in self.blocks:
            x = block(x)
        return self.projector(x)


def alignment_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity over patches and batch, computed in float32.

    Normalising in half precision overflows/underflows (REPA issue #46: NaN losses), so both
    sides are cast to float32 and autocast is switched off here.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"mapper output {tuple(predicted.shape)} and teacher tokens {tuple(target.shape)} differ")
    with torch.autocast(device_type=predicted.device.type, enabled=False):
        p = F.normalize(predicted.float(), dim=-1)
        t = F.normalize(target.float(), dim=-1)
        return 1.0 - (p * t).sum(-1).mean()


def mapper_patch_size(vae_downsample: int, token_stride: int = 16) -> int:
    """The mapper patch that makes its grid equal to the teacher's (1 for f16, 2 for f8)."""
    if token_stride % vae_downsample:
        raise ValueError(f"a VAE with downsampling {vae_downsample} cannot match teacher tokens every {token_stride} px")
    return token_stride // vae_downsample


def describe_grid_mismatch(latent_grid: tuple[int, int], patch: int, teacher_grid: tuple[int, int],
                           vae_downsample: int) -> str:
    fit = max(1, math.ceil(latent_grid[0] / teacher_grid[0]))
    return (f"mapper grid {latent_grid[0] // patch}x{latent_grid[1] // patch} (latent {latent_grid[0]}x{latent_grid[1]}, "
            f"patch {patch}) does not match the teacher's token grid {teacher_grid[0]}x{teacher_grid[1]}; "
            f"use --mapper-patch {fit} (= 16 / VAE downsampling {vae_downsample})")
