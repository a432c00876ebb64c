"""The LDM AutoencoderKL: a convolutional VAE with a diagonal Gaussian posterior.

One readable file, in the spirit of DiT's models.py. The architecture is the taming-transformers /
latent-diffusion `Encoder` / `Decoder` that SD-VAE, VA-VAE (LightningDiT), IN-VAE and E2E-VAE
(REPA-E) all share; only the channel widths, the number of levels and the latent width differ.

Module names follow the LDM state-dict layout exactly (`encoder.down.0.block.0.norm1.weight`,
`encoder.mid.attn_1.q.weight`, `decoder.up.3.upsample.conv.weight`, `quant_conv.weight`, ...),
so REPA-E and LightningDiT `.pt` files load with `load_state_dict` and no renaming. The
diffusers layout is a rename away (see `formats.py`).

Conventions: images in [-1, 1], NCHW, float. `encode(x)` returns the posterior; `decode(z)`
takes an unnormalised latent (per-channel latent normalisation lives with the caller).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn


#################################################################################
#                              Architecture configs                             #
#################################################################################


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of an LDM AutoencoderKL. Field names are LDM's `ddconfig` names.

    `resolution` is the nominal image size the model was designed for; together with
    `attn_resolutions` it only decides at which levels attention blocks exist (level i works at
    resolution / 2**i). Any image whose sides are multiples of `downsample` can be encoded.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    # None = same levels as the encoder. LightningDiT's MAR-style VAE has none in the decoder.
    decoder_attn_resolutions: tuple[int, ...] | None = None
    resolution: int = 256
    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 32
    embed_dim: int = 32
    double_z: bool = True
    # GroupNorm groups; 32 in every published LDM VAE. 0 = no normalisation: at a few channels
    # per group GroupNorm is an instance norm that strips each image's colour and brightness
    # from the features, which a tiny VAE then relearns slowly (docs/reproduce.md).
    norm_groups: int = 32
    dropout: float = 0.0

    def __post_init__(self):
        # Accept lists (from JSON) but store tuples so the config stays hashable.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.decoder_attn_resolutions is not None:
            object.__setattr__(self, "decoder_attn_resolutions", tuple(int(r) for r in self.decoder_attn_resolutions))
        if not self.ch_mult or self.ch <= 0 or self.num_res_blocks <= 0:
            raise ValueError("VAEConfig needs ch > 0, num_res_blocks > 0 and a non-empty ch_mult")
        if self.z_channels <= 0 or self.embed_dim <= 0:
            raise ValueError("VAEConfig needs z_channels > 0 and embed_dim > 0")
        widths = {self.ch * m for m in self.ch_mult} | {self.ch}
        if self.norm_groups < 0 or (self.norm_groups and any(w % self.norm_groups for w in widths)):
            raise ValueError(f"VAEConfig: channel widths {sorted(widths)} are not all divisible by "
                             f"norm_groups={self.norm_groups}")

    # -- derived sizes ---------------------------------------------------------------
    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_channels(self) -> int:
        return self.embed_dim

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, H, W) of the latent of a square image of side `image_size`."""
        if image_size % self.downsample:
            raise ValueError(f"image size {image_size} is not a multiple of the VAE downsampling {self.downsample}")
        side = image_size // self.downsample
        return (self.latent_channels, side, side)

    def attn_levels(self, decoder: bool = False) -> tuple[int, ...]:
        """Level indices (0 = full resolution) that hold attention blocks."""
        resolutions = self.attn_resolutions
        if decoder and self.decoder_attn_resolutions is not None:
            resolutions = self.decoder_attn_resolutions
        return tuple(i for i in range(len(self.ch_mult)) if self.resolution // 2**i in resolutions)

    def architecture_key(self) -> tuple:
        """Everything that decides the state-dict shapes (not resolution or group count)."""
        return (self.ch, self.ch_mult, self.num_res_blocks, self.attn_levels(), self.attn_levels(decoder=True),
                self.in_channels, self.out_channels, self.z_channels, self.embed_dim, self.double_z)

    # -- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VAE config fields: {', '.join(unknown)}")
        return cls(**dict(d))

    def describe(self) -> str:
        groups = "" if self.norm_groups == 32 else f", {self.norm_groups or 'no'} norm groups"
        return (f"f{self.downsample}d{self.latent_channels} (ch {self.ch}, ch_mult {tuple(self.ch_mult)}, "
                f"{self.num_res_blocks} res blocks, attention at levels {list(self.attn_levels())}{groups})")


# Name -> config. f8d4 is SD-VAE's shape, f16d32 VA-VAE / IN-VAE / E2E-VAE (REPA-E's `vae_models`).
VAE_CONFIGS: dict[str, VAEConfig] = {
    # 4 levels, no level reaches 16 px at 256, so no attention outside the middle block.
    "f8d4": VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), attn_resolutions=(), z_channels=4, embed_dim=4),
    # 5 levels; the lowest (16x16 at 256 px) holds attention in encoder and decoder.
    "f16d16": VAEConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), attn_resolutions=(16,), z_channels=16, embed_dim=16),
    "f16d32": VAEConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), attn_resolutions=(16,), z_channels=32, embed_dim=32),
    "f16d64": VAEConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), attn_resolutions=(16,), z_channels=64, embed_dim=64),
    # The f16 code path at toy size: same 5 levels and attention placement, 64 px images give a
    # 8x4x4 latent. For tests and CPU smoke runs; never for results.
    "tiny-f16d8": VAEConfig(ch=16, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(4,),
                            resolution=64, z_channels=8, embed_dim=8, norm_groups=8),
    # SD-VAE's f8 layout at toy size: an 8x8 latent at 64 px keeps a shape's outline, colour and
    # position, which a 4x4 latent blurs away. No attention (no level is small enough to need it).
    "tiny-f8d8": VAEConfig(ch=16, ch_mult=(1, 2, 4, 4), num_res_blocks=1, attn_resolutions=(),
                           resolution=64, z_channels=8, embed_dim=8, norm_groups=8),
    "small-f8d8": VAEConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(),
                            resolution=64, z_channels=8, embed_dim=8, norm_groups=8),
    # The CPU main job's VAE: a 4x16x16 latent at 64 px, narrow at full resolution (8 channels,
    # where most of the FLOPs are), wide below, and no normalisation: on 2 cores it draws each
    # shape's outline and hue within a few hundred steps, which the f8 layouts above do not.
    "tiny-f4d4": VAEConfig(ch=8, ch_mult=(1, 4, 8), num_res_blocks=1, attn_resolutions=(),
                           resolution=64, z_channels=4, embed_dim=4, norm_groups=0),
}


def config_name(config: VAEConfig) -> str | None:
    """The table name of a config with the same architecture, if any."""
    for name, known in VAE_CONFIGS.items():
        if known == config:
            return name
    for name, known in VAE_CONFIGS.items():
        if known.architecture_key() == config.architecture_key() and known.norm_groups == config.norm_groups:
            return name
    return None


#################################################################################
#                              Posterior distribution                           #
#################################################################################


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element, from the encoder's 2*C moment channels."""

    def __init__(self, moments: torch.Tensor):
        self.moments = moments
        mean, logvar = torch.chunk(moments, 2, dim=1)
        self.mean = mean.contiguous()  # chunk gives views; callers save, view and cache these
        # The LDM clamp: keeps exp() finite when an untrained or diverging encoder emits extremes.
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over C, H, W: one value per sample, shape (B,)."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


#################################################################################
#                                 Building blocks                               #
#################################################################################


def Normalize(channels: int, groups: int) -> nn.Module:
    if groups == 0:
        return nn.Identity()
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-SiLU-conv twice, plus a 1x1 `nin_shortcut` when the width changes. No time embedding."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels. q, k, v and proj_out are 1x1 convs (LDM keys)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = Normalize(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hidden = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head of width C, scale 1/sqrt(C) as in LDM.
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q(hidden), self.k(hidden), self.v(hidden)))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom only: LDM's asymmetric (0, 1, 0, 1) pad."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: `block` (resnets), `attn` (one per resnet, or none) and a resampler.

    A plain container so that names read `down.{i}.block.{j}`, `down.{i}.attn.{j}`,
    `down.{i}.downsample.conv`, `up.{i}.upsample.conv`, exactly as in LDM files.
    """

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution (`mid.block_1`, `mid.attn_1`, `mid.block_2`)."""

    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


#################################################################################
#                                Encoder / Decoder                              #
#################################################################################


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> moments (B, 2*z_channels, H/f, W/f) (or z_channels if not double_z)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.ch_mult)
        attn_levels = cfg.attn_levels()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            out = cfg.ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(width, out, g, cfg.dropout))
                width = out
                if i in attn_levels:
                    attns.append(AttnBlock(width, g))
            level = Level(blocks, attns)
            if i != levels - 1:  # every level but the last halves the resolution
                level.downsample = Downsample(width)
            self.down.append(level)
        self.mid = MidBlock(width, g, cfg.dropout)
        self.norm_out = Normalize(width, g)
        self.conv_out = nn.Conv2d(width, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_channels, h*f, w*f).

    `up[i]` is level i as in the encoder (0 = full resolution); it runs from the last level to
    the first. Each level has num_res_blocks + 1 resnets, as in LDM.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.ch_mult)
        attn_levels = cfg.attn_levels(decoder=True)
        width = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = MidBlock(width, g, cfg.dropout)
        up: list[Level] = [None] * levels  # type: ignore[list-item]
        for i in reversed(range(levels)):
            out = cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(width, out, g, cfg.dropout))
                width = out
                if i in attn_levels:
                    attns.append(AttnBlock(width, g))
            level = Level(blocks, attns)
            if i != 0:  # every level but the first doubles the resolution
                level.upsample = Upsample(width)
            up[i] = level
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(width, g)
        self.conv_out = nn.Conv2d(width, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


#################################################################################
#                                  AutoencoderKL                                #
#################################################################################


class AutoencoderKL(nn.Module):
    """Encoder + 1x1 `quant_conv` -> Gaussian posterior -> 1x1 `post_quant_conv` + Decoder."""

    def __init__(self, config: VAEConfig | str = "f16d32"):
        super().__init__()
        if isinstance(config, str):
            config = VAE_CONFIGS[config]
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        moments = 2 * config.z_channels if config.double_z else config.z_channels
        self.quant_conv = nn.Conv2d(moments, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @torch.no_grad()
    def init_posterior_logvar(self, value: float) -> None:
        """Start the posterior's log-variance near `value` (a VAE from random weights only).

        At PyTorch's default init the posterior's std is about 1, as large as the spread of the
        latent means, and with a KL weight of 1e-6 it shrinks only over hundreds of steps; until
        then the decoder learns from latents that barely tell neighbouring hues apart. A bias of
        -4 starts the std at e^-2 = 0.14 (docs/reproduce.md measures what it buys).
        """
        self.quant_conv.bias[self.config.embed_dim:] = value

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images in [-1, 1], (B, 3, H, W) with H, W multiples of `downsample` -> posterior."""
        f = self.config.downsample
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the VAE downsampling {f}")
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latent (B, C, h, w) -> image (B, 3, h*f, w*f), roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior


__all__ = ["VAEConfig", "VAE_CONFIGS", "config_name", "DiagonalGaussian", "AutoencoderKL", "Encoder", "Decoder"]
