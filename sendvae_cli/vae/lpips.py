"""LPIPS (Zhang et al. 2018, v0.1, VGG16 trunk): the perceptual term of the VAE loss.

distance(x, y) = sum over 5 VGG16 layers of spatial_mean( lin_l( (unit(f_l(x)) - unit(f_l(y)))^2 ) )

where f_l are the VGG16 activations at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the
shifted and scaled image, `unit` normalises each feature vector to unit length over channels, and
lin_l is a 1x1 convolution without bias (learned per-channel weights, all >= 0).

Weights come from two files, looked up in this order (first hit wins):
- VGG16 trunk: `vgg16-397923af.pth`, torchvision's ImageNet file: the given path, else the torch
  hub cache (`torch.hub.get_dir()/checkpoints`), else a download into that cache unless
  HF_HUB_OFFLINE=1.
- lin layers: `vgg.pth` of LPIPS v0.1: the given path, else the copy shipped inside the `lpips`
  PyPI package (found without importing it), else the torch hub cache, else a download into that
  cache unless HF_HUB_OFFLINE=1. It is the same file taming-transformers and REPA-E use.

The module is frozen (no parameter gradients, always in eval mode) but differentiable with
respect to its inputs. Images are in [-1, 1] (NCHW); the distance is computed in float32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sendvae_cli.errors import WeightsNotFound
from sendvae_cli.weights import WeightFile, hub_checkpoints, load_exactly, packaged_file, read_state_dict, resolve_file

VGG_FILE = "vgg16-397923af.pth"
VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG_SHA256_PREFIX = "397923af"  # torchvision file names end in the first digits of their SHA-256
LIN_FILE = "vgg.pth"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
VGG_OPTION = "--lpips-vgg-weights"
LIN_OPTION = "--lpips-lin-weights"
LIN_PACKAGED = ("lpips", f"weights/v0.1/{LIN_FILE}")  # the copy the lpips PyPI package ships
VGG_WEIGHTS = WeightFile(VGG_FILE, VGG_OPTION, url=VGG_URL, hash_prefix=VGG_SHA256_PREFIX)
LIN_WEIGHTS = WeightFile(LIN_FILE, LIN_OPTION, url=LIN_URL, package=LIN_PACKAGED, package_first=True)

# torchvision's VGG16 `features` up to relu5_3 (the last max-pool is never used): numbers are conv
# widths, "M" a 2x2 max-pool. Building it here avoids allocating VGG's 120M-parameter classifier.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices into `features` (torchvision numbering) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAPS = (3, 8, 15, 22, 29)
CHANNELS = (64, 128, 256, 512, 512)

# The lpips package's input scaling: maps [-1, 1] images to ImageNet mean/std normalisation.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for width in VGG16_LAYERS:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*layers)


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # eps is added to the norm (not under the square root) exactly as in the lpips package.
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """Per-image LPIPS distance: `LPIPS()(x, y)` -> (B,) for images in [-1, 1]."""

    def __init__(self, vgg_weights: Path | str | None = None, lin_weights: Path | str | None = None,
                 random_weights: bool = False):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        if random_weights:
            # Positive lin weights keep the random distance a non-negative, symmetric metric.
            for lin in self.lins:
                nn.init.uniform_(lin.weight, 0.0, 2.0 / lin.in_channels)
        else:
            vgg_path, lin_path = find_weights(vgg_weights, lin_weights)
            self.load_vgg(vgg_path)
            self.load_lins(lin_path)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        # Frozen for good: a training loop calling .train() on everything must not change it.
        return super().train(False)

    # -- weights -------------------------------------------------------------------------------
    def load_vgg(self, path: Path) -> None:
        """torchvision VGG16 ImageNet weights (`features.*` keys; the classifier is ignored)."""
        state = read_state_dict(path, VGG_OPTION)
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        load_exactly(self.features, state, path=path, option=VGG_OPTION, what="is not the torchvision VGG16 features")

    def load_lins(self, path: Path) -> None:
        """LPIPS lin weights: the lpips package's `lin{i}.model.1.weight` (index 1 follows its
        dropout layer), taming's layout without dropout `lin{i}.model.0.weight`, or ours."""
        state = read_state_dict(path, LIN_OPTION)
        renamed = {}
        for key, value in state.items():
            parts = key.split(".")
            if len(parts) == 4 and parts[0].startswith("lin") and parts[1] == "model" and parts[3] == "weight":
                key = f"{parts[0][3:]}.weight"
            elif key.startswith("lins."):
                key = key[len("lins."):]
            renamed[key] = value
        load_exactly(self.lins, renamed, path=path, option=LIN_OPTION, what="is not the LPIPS v0.1 VGG lin layers")

    # -- forward -------------------------------------------------------------------------------
    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        out = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two image batches of equal shape (B, 3, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
        # float32 always: squared differences of unit vectors underflow in fp16/bf16.
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = self.scale.dtype
            fx = self.layer_features(x.to(dtype))
            fy = self.layer_features(y.to(dtype))
            distance = 0.0
            for lin, a, b in zip(self.lins, fx, fy):
                diff = (unit_normalize(a) - unit_normalize(b)).pow(2)
                distance = distance + lin(diff).mean(dim=(1, 2, 3))
        return distance


# -- finding the weight files ------------------------------------------------------------------
def packaged_lin_weights() -> Path | None:
    """`lpips/weights/v0.1/vgg.pth` of an installed lpips package, found without importing it."""
    return packaged_file(*LIN_PACKAGED)


def find_weights(vgg_weights: Path | str | None, lin_weights: Path | str | None) -> tuple[Path, Path]:
    """Both weight files, or one WeightsNotFound line naming every missing file and where it goes."""
    cache = hub_checkpoints()
    vgg = resolve_file(VGG_WEIGHTS, vgg_weights)
    lin = resolve_file(LIN_WEIGHTS, lin_weights)
    missing = []
    if vgg is None:
        missing.append(f"{VGG_FILE} (torchvision VGG16 ImageNet weights, {VGG_URL}): put it in {cache}/ or pass {VGG_OPTION} PATH")
    if lin is None:
        missing.append(f"{LIN_FILE} (LPIPS v0.1 lin layers): `pip install lpips` ships it, or put it in {cache}/ or pass {LIN_OPTION} PATH")
    if missing:
        raise WeightsNotFound("LPIPS: pretrained weights not found: " + "; ".join(missing)
                              + "; or train without the perceptual loss: --lpips-weight 0")
    return vgg, lin
