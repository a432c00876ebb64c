"""L_VAE: reconstruction + LPIPS + KL + PatchGAN hinge, following REPA-E's VAE loss.

Generator (VAE) side, per step:
    loss = recon_weight * L1(x, x_hat)            # or MSE with recon="mse"; mean over all pixels
         + lpips_weight * mean_b LPIPS(x, x_hat)
         + kl_weight    * sum(KL) / B              # KL summed over C, H, W, averaged over the batch
         + gan_weight   * [step >= disc_start] * (-mean D(x_hat))
Discriminator side:
    d_loss = [step >= disc_start] * 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))

Facts from REPA-E (`loss/losses.py`, `configs/l1_lpips_kl_gan.yaml`, `train_repae.py`):
weights 1.0 / 1.0 / 1e-6 / 0.1 and `discriminator_start: 0`; the GAN weight is a constant (no
taming-style adaptive weight from last-layer gradient norms); the reconstruction is not divided by
a learned variance (its `logvar` is a frozen 0); images are in [-1, 1] for every term; the whole
loss runs in float32 outside autocast; before `disc_start` the discriminator loss is computed and
multiplied by 0 (so every discriminator parameter still takes part in backward, which DDP wants).

Intended training-loop use (one VAE step, then one discriminator step on the same batch):
    terms = loss_fn.generator_loss(images, recon, posterior, step)
    (terms["loss"] + align_weight * align).backward(); vae_opt.step()
    d_terms = loss_fn.discriminator_loss(images, recon, step)
    d_terms["loss"].backward(); disc_opt.step()
Under DDP, `loss_fn.discriminator` may be the DDP-wrapped discriminator: the generator term then
calls its `.module` (no gradient sync), the discriminator step the wrapper. The discriminator
has its own optimiser, AdamW(discriminator.parameters(), lr=1e-4, betas=(0.9, 0.999),
weight_decay=0), and gradient clipping 1.0, as REPA-E. Save and restore
`discriminator.state_dict()` and that optimiser's state with every checkpoint.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from sendvae_cli.vae.discriminator import NLayerDiscriminator, hinge_d_loss, hinge_g_loss
from sendvae_cli.vae.lpips import LPIPS

RECON_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


class Posterior(Protocol):
    def kl(self) -> torch.Tensor:  # (B,) KL(q(z|x) || N(0, I)), summed over latent C, H, W
        ...


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Forward through `module` without building gradients for its parameters.

    The generator's GAN term must move the VAE only; the discriminator's parameters are left out
    of the graph (REPA-E does the same by toggling requires_grad), and restored afterwards.
    """
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class VAELoss(nn.Module):
    """The VAE-side loss terms and the discriminator loss; holds LPIPS and the discriminator."""

    def __init__(self, lpips: LPIPS | None, discriminator: NLayerDiscriminator | nn.Module, *, recon: str = "l1",
                 recon_weight: float = 1.0, lpips_weight: float = 1.0, kl_weight: float = 1e-6,
                 gan_weight: float = 0.1, disc_start: int = 0):
        super().__init__()
        if recon not in RECON_LOSSES:
            raise ValueError(f"recon must be one of {', '.join(RECON_LOSSES)}, got {recon!r}")
        self.lpips = lpips
        self.discriminator = discriminator
        self.recon = recon
        self.recon_weight = float(recon_weight)
        self.lpips_weight = float(lpips_weight)
        self.kl_weight = float(kl_weight)
        self.gan_weight = float(gan_weight)
        self.disc_start = int(disc_start)

    def gan_active(self, step: int) -> bool:
        return step >= self.disc_start

    def generator_loss(self, images: torch.Tensor, recon: torch.Tensor, posterior: Posterior,
                       step: int) -> dict[str, torch.Tensor]:
        """Loss for the VAE: {"loss": weighted total (with graph), "recon", "lpips", "kl", "gan":
        unweighted terms (detached), "gan_factor": 1.0 once step >= disc_start else 0.0}."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            images, recon = images.float(), recon.float()
            recon_loss = RECON_LOSSES[self.recon](recon, images)
            # No LPIPS network at weight 0: its VGG16 weights are then not needed at all.
            lpips_loss = self.lpips(images, recon).mean() if self.lpips is not None else images.new_zeros(())
            kl = posterior.kl().float()
            kl_loss = kl.sum() / kl.shape[0]
            factor = 1.0 if self.gan_active(step) else 0.0
            gan_loss = torch.zeros((), device=images.device)
            if factor > 0 and self.gan_weight > 0:
                # Under DDP call the inner module here: this pass must not join gradient sync
                # (the discriminator gets no gradient from it); only the discriminator step does.
                discriminator = getattr(self.discriminator, "module", self.discriminator)
                with frozen(discriminator):
                    gan_loss = hinge_g_loss(discriminator(recon))
            total = (self.recon_weight * recon_loss + self.lpips_weight * lpips_loss
                     + self.kl_weight * kl_loss + self.gan_weight * factor * gan_loss)
        return {
            "loss": total,
            "recon": recon_loss.detach(),
            "lpips": lpips_loss.detach(),
            "kl": kl_loss.detach(),
            "gan": gan_loss.detach(),
            "gan_factor": torch.tensor(factor, device=images.device),
        }

    def discriminator_loss(self, images: torch.Tensor, recon: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """Loss for the discriminator (inputs detached here): {"loss": with graph, "logits_real",
        "logits_fake": mean logits (detached)}. Zero (times the real loss) before disc_start."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            # Two passes, not one concatenated batch: BatchNorm statistics per pass, as REPA-E.
            logits_real = self.discriminator(images.detach().float())
            logits_fake = self.discriminator(recon.detach().float())
            factor = 1.0 if self.gan_active(step) else 0.0
            loss = factor * hinge_d_loss(logits_real, logits_fake)
        return {
            "loss": loss,
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
