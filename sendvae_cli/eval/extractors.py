"""The feature extractors `sendvae fid` and `sendvae recon` measure distances in.

`inception` is the ADM suite's network (`inception.InceptionFeatures`): pool_3 for FID and
precision/recall, a spatial tensor for sFID, logits for the Inception Score. Any registered
teacher is an extractor too (`TeacherExtractor`): one global feature per image
(`Teacher.global_features`: the CLS token for DINOv2, whose Fréchet distance is FD_DINOv2 as
Stein et al. 2023 compute it; the mean of the last feature map for the torchvision CNNs), so the
Fréchet distance and precision/recall work in its space; sFID and the Inception Score do not
exist there.

Every extractor takes uint8 (B, 3, H, W) images and returns (features, spatial | None,
logits | None) as float32 on its device, and carries what the statistics files and the cache key
record: `name`, `dim`, `sha256` (of its weights), `describe()`.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from sendvae_cli.errors import UserError
from sendvae_cli.images import to_model_range

INCEPTION = "inception"
# Stein et al. (NeurIPS 2023), dgm-eval `dgm_eval/models/dinov2.py`: every image is resized to
# 224 x 224 with PIL's bicubic filter (torchvision `Resize((224, 224), BICUBIC)` on a PIL image),
# then normalised with the ImageNet mean/std; the feature is the model's output, DINOv2's CLS
# token after the final norm. The same input rule is used for every teacher.
TEACHER_INPUT_SIZE = 224


@contextmanager
def tf32_matmuls(device: torch.device) -> Iterator[None]:
    """TF32 matmuls and convolutions on CUDA (teacher features: ~1e-3 relative, 5-10x faster)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float [0, 255] at size x size: bicubic with antialiasing, rounded and
    clamped to whole levels as PIL's resize of an 8-bit image gives them."""
    x = images.float()
    if tuple(x.shape[-2:]) == (size, size):
        return x
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.round_().clamp_(0.0, 255.0)


class TeacherExtractor:
    """uint8 NCHW images -> (global feature (B, width), None, None), float32, on `device`."""

    spatial_dim = None
    has_logits = False
    path = None

    def __init__(self, teacher, spec, device: torch.device | str = "cpu", *, weights: Path | None = None,
                 random_weights: bool = False, size: int = TEACHER_INPUT_SIZE):
        from sendvae_cli.provenance import weights_sha256

        self.teacher = teacher.eval().requires_grad_(False)
        self.spec = spec
        self.name = spec.name
        self.dim = int(teacher.width)
        self.size = int(size)
        self.device = torch.device(device)
        self.teacher.to(self.device)
        self.weights = weights
        self.random_weights = random_weights
        self.sha256 = weights_sha256(self.teacher)

    @property
    def is_release(self) -> bool:
        return not self.random_weights

    def feature_name(self) -> str:
        kind = getattr(self.teacher, "global_feature", "mean")
        if kind == "cls":
            return f"CLS token of the final norm output ({self.dim})"
        return f"patch tokens / last feature map averaged over positions ({self.dim})"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        x = to_model_range(resize_uint8(images.to(self.device, non_blocking=True), self.size))
        with tf32_matmuls(self.device):
            features = self.teacher.global_features(x, size=self.size)
        return features.float(), None, None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "teacher",
            "family": self.spec.family,
            "source": self.spec.source,
            "weights_path": str(self.weights) if self.weights else None,
            "weights_sha256": self.sha256,
            "release_weights": self.is_release,
            "input": f"uint8 RGB; bicubic resize with antialiasing to {self.size}x{self.size}, rounded to whole "
                     f"levels (as PIL); the teacher's mean/std; float32 (TF32 matmuls on CUDA)",
            "fd_features": self.feature_name(),
            "device": str(self.device),
        }


def metric_name(name: str) -> str:
    """What the Fréchet distance is called in tables: FID, FD_DINOv2 (dinov2-l), FD_NAME."""
    if name == INCEPTION:
        return "FID"
    if name in ("dinov2-l", "dinov2-vit-l"):
        return "FD_DINOv2"
    return f"FD_{name}"


def open_extractor(name: str, *, registry=None, device: torch.device | str = "cpu",
                   inception_weights: Path | None = None, teacher_weights: Path | None = None,
                   random_weights: bool = False, seed: int = 0):
    """`inception` or a registered teacher, ready on `device`. Missing weights raise the one
    offline error (WeightsNotFound) that names the file and where to put it."""
    if name == INCEPTION:
        from sendvae_cli.eval.inception import InceptionFeatures, random_inception_weights

        if teacher_weights is not None:
            raise UserError(f"--teacher-weights {teacher_weights}: goes with a teacher extractor; "
                            f"Inception takes --inception-weights")
        if random_weights:
            if inception_weights is not None:
                raise UserError("--inception-weights and --random-weights exclude each other")
            with tempfile.TemporaryDirectory() as tmp:
                path = random_inception_weights(Path(tmp) / "inception-random.pth", seed=seed)
                return InceptionFeatures.load(path, device)
        return InceptionFeatures.load(inception_weights, device)
    if inception_weights is not None:
        raise UserError(f"--inception-weights {inception_weights}: goes with --extractor inception, "
                        f"not {name}")
    if teacher_weights is not None and random_weights:
        raise UserError("--teacher-weights and --random-weights exclude each other")
    if registry is None:
        from sendvae_cli.registry import get_registry

        registry = get_registry()
    try:
        spec = registry.teacher(name)
    except UserError as error:
        raise UserError(f"--extractor {name}: {error} (or inception)") from None
    if teacher_weights is not None and not Path(teacher_weights).expanduser().exists():
        raise UserError(f"--teacher-weights {teacher_weights}: no such file or folder")
    with torch.random.fork_rng(devices=[]):  # random weights are seeded: reruns find their caches
        torch.manual_seed(seed)
        teacher = spec.build(weights=teacher_weights, random_weights=random_weights)
    return TeacherExtractor(teacher, spec, device, weights=teacher_weights, random_weights=random_weights)
