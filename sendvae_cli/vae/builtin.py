"""The built-in VAE bases, registered through the same hook as any outside plugin.

A base is an architecture (a name in `sendvae_cli.vae.autoencoder.VAE_CONFIGS`) plus where its
initial weights come from. Factory contract (`sendvae_cli.vae.open:build_base`):

    spec.build(weights: Path | None = None, random_weights: bool = False) -> LoadedVAE

`LoadedVAE` (sendvae_cli.vae.formats) holds `.model` (AutoencoderKL, LDM layout, float32, CPU),
`.latent_mean` / `.latent_std` (float32 (C,) tensors, or None when the source has none) and
`.provenance` (dict). `weights` is any local source `open_vae` reads (REPA-E .pt, diffusers
folder, exported folder) and must fit the base's architecture; `random_weights` skips loading.

Options of a spec: `config` (a VAE_CONFIGS name), `hub` (a Hugging Face repo id, downloaded
with huggingface_hub only when neither weights nor random_weights is given), `hub_files`
(glob patterns of the files to fetch). A base without `hub` starts from random weights.

This module never imports torch.
"""

import re

from sendvae_cli.hookspecs import hookimpl
from sendvae_cli.specs import VAEBaseSpec

FACTORY = "sendvae_cli.vae.open:build_base"
REPA_E_LICENCE = "MIT (REPA-E model card)"
# REPA-E's LDM-layout repos hold `<name>.pt`, `<name>-latents-stats.pt` and
# `<name>-discriminator-ckpt.pt`; all three are small next to the VAE and all are useful here.
LDM_FILES = ("*.pt",)


def _sizes(config: str) -> tuple[int, int]:
    """(downsample, latent channels) from a config name such as 'f16d32' or 'tiny-f16d8'."""
    m = re.search(r"f(\d+)d(\d+)$", config)
    return int(m[1]), int(m[2])


def _pretrained(name, config, repo, description, aliases=(), licence=REPA_E_LICENCE):
    downsample, channels = _sizes(config)
    return VAEBaseSpec(
        name=name, description=description, factory=FACTORY, downsample=downsample, latent_channels=channels,
        source=f"hf:{repo}", licence=licence, aliases=tuple(aliases),
        options={"config": config, "hub": repo, "hub_files": LDM_FILES},
    )


def _scratch(config, description=None, name=None, aliases=()):
    downsample, channels = _sizes(config)
    return VAEBaseSpec(
        name=name or f"{config}-scratch", description=description or f"LDM AutoencoderKL {config}, random init",
        factory=FACTORY, downsample=downsample, latent_channels=channels, source="random init",
        needs_weights=False, licence="-", aliases=tuple(aliases), options={"config": config},
    )


VAE_BASES = [
    # The VAEs REPA-E (and so Send-VAE) starts from, in REPA-E's repackaging: LDM-layout .pt
    # plus per-channel latent statistics.
    _pretrained("va-vae", "f16d32", "REPA-E/vavae",
                "VA-VAE f16d32 from LightningDiT (aligned to DINOv2), as repackaged by REPA-E; the Send-VAE default",
                aliases=("vavae",)),
    _pretrained("sd-vae", "f8d4", "REPA-E/sdvae",
                "SD-VAE f8d4 (stabilityai/sd-vae-ft-mse), as repackaged by REPA-E", aliases=("sdvae",)),
    _pretrained("in-vae", "f16d32", "REPA-E/invae", "IN-VAE f16d32, trained on ImageNet by REPA-E",
                aliases=("invae",)),
    # E2E-VAEs: the VAEs REPA-E tuned end to end with a SiT (the paper's strongest baseline).
    _pretrained("e2e-vae", "f16d32", "REPA-E/e2e-vavae", "E2E-VAE f16d32 (REPA-E end-to-end tuned VA-VAE)",
                aliases=("e2e-vavae",)),
    _pretrained("e2e-sdvae", "f8d4", "REPA-E/e2e-sdvae", "E2E-VAE f8d4 (REPA-E end-to-end tuned SD-VAE)"),
    _pretrained("e2e-invae", "f16d32", "REPA-E/e2e-invae", "E2E-VAE f16d32 (REPA-E end-to-end tuned IN-VAE)"),
    # Random initialisation, for training a VAE from scratch.
    _scratch("f8d4"),
    _scratch("f16d16"),
    _scratch("f16d32"),
    _scratch("f16d64"),
    _scratch("tiny-f16d8", name="tiny",
             description="tiny f16d8 (ch 16, 5 levels), random init: tests and CPU smoke runs only"),
    _scratch("tiny-f8d8", name="tiny-f8",
             description="tiny f8d8 (ch 16, 4 levels), random init: an 8x8 latent at 64 px, CPU runs"),
    _scratch("small-f8d8", name="small-f8",
             description="small f8d8 (ch 32, 4 levels), random init: CPU experiments at 64 px"),
    _scratch("tiny-f4d4", name="tiny-f4",
             description="tiny f4d4 (ch 8-64, 3 levels), random init: the CPU main job's VAE (16x16 at 64 px)"),
]


@hookimpl
def register_vae_bases(register):
    for spec in VAE_BASES:
        register(spec)
