"""Per-image reconstruction quality: PSNR and SSIM on [0, 255] images, and LPIPS.

PSNR and SSIM come from torchmetrics (its functional API: kept up to date by the Lightning team,
runs on the GPU, and implements the standard definitions that scikit-image also implements; the
tests check the two agree to 1e-4):

- both images are whole levels in [0, 255] (a reconstruction is clamped and rounded as when it is
  saved as a PNG), computed in float64;
- PSNR = 10 log10(255^2 / MSE) per image, MSE over all pixels and channels (LightningDiT's
  tokenizer evaluation: PSNR on [0, 255], per image, averaged over images); an exact
  reconstruction (MSE = 0) has PSNR = +inf;
- SSIM: Wang et al. 2004, Gaussian window (11 x 11, sigma 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, per channel; torchmetrics' SSIM map, averaged over pixels and channels where the whole
  window fits (torchmetrics' own mean also covers a reflect-padded border of half a window)
  (scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255, channel_axis=-1)`).

LPIPS is `sendvae_cli.vae.lpips.LPIPS` (VGG, v0.1) on the same whole-level images mapped to [-1, 1].
"""

from __future__ import annotations

import torch

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
DATA_RANGE = 255.0


def psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """(B,) float64 PSNR of [0, 255] images; +inf where the two are equal."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(reconstruction.double(), original.double(), data_range=DATA_RANGE,
                                   reduction="none", dim=(1, 2, 3))


def ssim(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """(B,) float64 SSIM of [0, 255] images (Gaussian window 11, sigma 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    side = min(original.shape[-2:])
    if side < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {side}")
    _, full = structural_similarity_index_measure(
        reconstruction.double(), original.double(), gaussian_kernel=True, sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW, reduction="none", data_range=DATA_RANGE, k1=0.01, k2=0.03, return_full_image=True)
    # torchmetrics averages its SSIM map over a reflect-padded border too; the standard definition
    # (Wang et al.'s reference code, scikit-image) averages only where the whole window fits.
    pad = (SSIM_WINDOW - 1) // 2
    return full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))
