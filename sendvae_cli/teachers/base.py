"""The teacher contract: images in [-1, 1] (NCHW) in, patch tokens (B, N, D) out.

A teacher owns its input handling: it resizes the image so that its token grid is
`resolution / TOKEN_STRIDE` on each side (REPA's convention: 256 px -> 224 px for a patch-14
model, 256 px for a patch-16 model; both give 16 x 16 tokens), applies its own mean/std, runs
frozen in eval mode without gradients, and drops prefix (CLS / register) tokens.

Feature-space metrics (`sendvae fid --extractor NAME`) need one vector per image instead:
`global_features(images, size)`. By default it is the patch tokens averaged over positions, so
every teacher has one; a teacher whose standard global feature is something else (the CLS token
of DINOv2, which FD_DINOv2 uses) overrides `pooled(pixels)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# One teacher token per 16 x 16 image pixels, whatever the teacher's own patch size: the token
# grid then equals the latent grid of an f16 VAE (and of an f8 VAE with a patch-2 mapper).
TOKEN_STRIDE = 16

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


class Teacher(nn.Module, ABC):
    """Base class: subclasses implement `tokens(pixels)` on normalised, resized pixels."""

    def __init__(self, *, name: str, width: int, patch_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.name = name
        self.width = int(width)
        self.patch_size = int(patch_size)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # -- geometry ----------------------------------------------------------------------------
    def token_grid(self, height: int, width: int | None = None) -> tuple[int, int]:
        """Token grid (rows, cols) for an image of this size."""
        width = height if width is None else width
        for side in (height, width):
            if side % TOKEN_STRIDE or side <= 0:
                raise ValueError(
                    f"image size {height}x{width} does not fit teacher {self.name!r}: "
                    f"each side must be a positive multiple of {TOKEN_STRIDE}"
                )
        return height // TOKEN_STRIDE, width // TOKEN_STRIDE

    def num_tokens(self, height: int, width: int | None = None) -> int:
        rows, cols = self.token_grid(height, width)
        return rows * cols

    def input_size(self, height: int, width: int | None = None) -> tuple[int, int]:
        """The pixel size the image is resized to before the teacher sees it."""
        rows, cols = self.token_grid(height, width)
        return rows * self.patch_size, cols * self.patch_size

    # -- forward -----------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1.0) / 2.0
        x = (x - self.pixel_mean) / self.pixel_std
        size = self.input_size(*x.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        return x

    @abstractmethod
    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) of normalised, resized pixels, without prefix tokens."""

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"teacher {self.name!r} expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        pixels = self.preprocess(images)
        out = self.tokens(pixels)
        expected = (images.shape[0], self.num_tokens(*images.shape[-2:]), self.width)
        if tuple(out.shape) != expected:
            raise RuntimeError(f"teacher {self.name!r} returned tokens {tuple(out.shape)}, expected {expected}")
        return out

    # -- one vector per image ----------------------------------------------------------------
    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """One vector per image (B, width) from normalised pixels of any size the model takes.

        Default: the patch tokens averaged over positions (for a CNN, its global average pool).
        Override where another feature is the standard global one (a ViT's CLS token).
        """
        return self.tokens(pixels).float().mean(dim=1)

    @torch.no_grad()
    def global_features(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """(B, width) for images in [-1, 1] (NCHW).

        `size`: the square side the model sees (bicubic, antialiased; no resize when the images
        already have it), as feature-space metrics fix their input size. None: the token-grid
        size of `forward`.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"teacher {self.name!r} expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if size is None:
            pixels = self.preprocess(images)
        else:
            x = (images.float() + 1.0) / 2.0
            if tuple(x.shape[-2:]) != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
            pixels = (x - self.pixel_mean) / self.pixel_std
        out = self.pooled(pixels)
        if tuple(out.shape) != (images.shape[0], self.width):
            raise RuntimeError(f"teacher {self.name!r} returned global features {tuple(out.shape)}, "
                               f"expected {(images.shape[0], self.width)}")
        return out.float()

    def freeze(self) -> "Teacher":
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        # Frozen for good: a training loop calling .train() on everything must not flip
        # dropout or norm statistics inside the teacher.
        return super().train(False)
