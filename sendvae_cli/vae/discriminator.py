"""PatchGAN discriminator and hinge losses: the adversarial term of the VAE loss.

The architecture, initialisation and parameter names follow taming-transformers'
`NLayerDiscriminator` as used by REPA-E (`loss/discriminator.py` there, built with
`use_actnorm=False`, i.e. BatchNorm2d, and `.apply(weights_init)`), so REPA-E's discriminator
checkpoints (keys `main.0.weight` ... `main.11.bias`) load unchanged.

Layout for n_layers=3, ndf=64 (4x4 kernels, LeakyReLU 0.2):
    conv 3->64 s2 (bias) | conv 64->128 s2, BN | conv 128->256 s2, BN | conv 256->512 s1, BN | conv 512->1 s1 (bias)
Convolutions followed by BatchNorm have no bias. A 256 px image gives 30x30 patch logits.

The discriminator sees images in [-1, 1], as in REPA-E (`preprocess_imgs_vae` feeds [-1, 1] images
to its loss). Keep it in train mode during training: REPA-E never switches it to eval, so
BatchNorm uses batch statistics in both the generator and the discriminator step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sendvae_cli.errors import UserError
from sendvae_cli.weights import load_exactly

DISCRIMINATOR_OPTION = "--disc-weights"
# Wrappers a saved state dict may carry: DDP (`module.`) and torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class NLayerDiscriminator(nn.Module):
    """PatchGAN (pix2pix): a grid of real/fake logits, one per receptive-field patch."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden conv keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),  # BN has the bias
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [-1, 1] -> (B, 1, H', W') logits (30x30 at 256 px)."""
        return self.main(images)


def init_weights(module: nn.Module) -> None:
    # DCGAN initialisation, as taming/REPA-E: conv N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss, halved as in taming: 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -E[D(x_hat)]."""
    return -logits_fake.mean()


def load_discriminator(path: Path | str, discriminator: NLayerDiscriminator | None = None,
                       option: str = DISCRIMINATOR_OPTION) -> NLayerDiscriminator:
    """Load discriminator weights, strictly, into `discriminator` (a new default one if None).

    Accepted layouts (REPA-E's, see train_repae.py and save_vae_weights.py there):
    - a bare state dict, e.g. REPA-E's released `*-discriminator-ckpt.pt`
      (`torch.save(ckpt["discriminator"])`) or a .safetensors file;
    - a training checkpoint dict holding it under "discriminator" (REPA-E's `NNNNNNN.pt`, next to
      "model", "ema", "vae", "opt", "opt_vae", "opt_disc", "args" (an argparse.Namespace), "steps").
    Keys may carry DDP/torch.compile prefixes (`module.`, `_orig_mod.`).
    """
    discriminator = discriminator if discriminator is not None else NLayerDiscriminator()
    path = Path(path).expanduser()
    state = read_discriminator_state(path, option)
    load_exactly(discriminator, state, path=path, option=option, what="is not an NLayerDiscriminator checkpoint of this size")
    return discriminator


def read_discriminator_state(path: Path, option: str = DISCRIMINATOR_OPTION) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            # weights_only stays on; REPA-E's full checkpoints also pickle their argparse.Namespace.
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user-facing problem
        raise UserError(f"{option} {path}: not a readable weights file ({type(error).__name__}: {error})") from None
    if isinstance(obj, dict) and isinstance(obj.get("discriminator"), dict):
        obj = obj["discriminator"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{option} {path}: expected a discriminator state dict or a checkpoint with a "
                        f"'discriminator' entry, found {keys or 'an empty dict'}")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj
