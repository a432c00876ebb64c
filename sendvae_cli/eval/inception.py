"""The ADM suite's Inception-v3 features, through torch-fidelity's port of the TF graph.

torch-fidelity's `FeatureExtractorInceptionV3` is a PyTorch copy of the TensorFlow Inception
graph `classify_image_graph_def.pb` (2015-12-05) that ADM's evaluator runs, weights converted
from that graph, with TF1's bilinear resize to 299 x 299 and (x - 128) / 128 inside its forward
on uint8 input. It provides two of the three tensors the ADM suite uses:

- `2048`: pool_3, the FID and precision/recall features;
- `logits_unbiased`: pool_3 @ W of the softmax layer *without* its bias, which is what ADM's
  Inception Score takes the softmax of (1008 classes).

The third, sFID's `mixed_6/conv:0`, is the output (after batch norm and ReLU) of the 1x1 branch
of the seventh mixed block, which torch-fidelity names `Mixed_6d.branch1x1` (192 channels,
17 x 17). A forward hook takes it; ADM keeps its first 7 channels in TF's NHWC layout and
flattens them, so the spatial feature is (17, 17, 7) -> 2023 values in (h, w, c) order, which
makes our mean and covariance directly comparable with the `mu_s`, `sigma_s` of ADM reference
batches.

Weights: `weights-inception-2015-12-05-6726825d.pth`, torch-fidelity's release file. Looked up
as `--inception-weights PATH` (a file, or a folder holding it), else in the torch hub cache
(`torch.hub.get_dir()/checkpoints`, where torch-fidelity itself puts it), else downloaded there
unless HF_HUB_OFFLINE=1; otherwise one error line says what to fetch and where to put it. The
file is read with `torch.load(weights_only=True)` only (torch-fidelity's own loader unpickles
freely), its sha256 is recorded, and a file other than the release one is flagged.
"""

from __future__ import annotations

import hashlib
import io
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from sendvae_cli.errors import UserError, WeightsNotFound
from sendvae_cli.io import save_torch
from sendvae_cli.weights import WeightFile, hub_checkpoints, resolve_file

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
RELEASE_SHA256_PREFIX = "6726825d"
OPTION = "--inception-weights"
POOL_DIM = 2048
LOGITS_DIM = 1008
SPATIAL_CHANNELS = 7
SPATIAL_GRID = 17
SPATIAL_DIM = SPATIAL_GRID * SPATIAL_GRID * SPATIAL_CHANNELS  # 2023
SPATIAL_MODULE = "Mixed_6d.branch1x1"  # TF: mixed_6/conv


def weights_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


WEIGHTS = WeightFile(WEIGHTS_FILE, OPTION, url=weights_url, hash_prefix=RELEASE_SHA256_PREFIX)


def find_weights(given: Path | str | None) -> Path:
    """The weights file to use, or one WeightsNotFound line naming the file and where it goes."""
    return resolve_file(WEIGHTS, given, missing=lambda: WeightsNotFound(
        f"Inception weights not found: {WEIGHTS_FILE} is neither in {hub_checkpoints()}/ nor downloadable here. "
        f"On a machine with network fetch {weights_url()} and put it in {hub_checkpoints()}/, or pass {OPTION} PATH."
    ))


def _architecture(features: list[str], meta: bool = False) -> nn.Module:
    """torch-fidelity's Inception-v3 without reading any weights (on the meta device: no storage)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # skips the empty dict below
            if state_dict:
                return super().load_state_dict(state_dict, strict=strict, assign=assign)
            return None

    buffer = io.BytesIO()
    torch.save({}, buffer)
    buffer.seek(0)
    if meta:
        with torch.device("meta"):
            return _Unloaded("inception-v3-compat", features, feature_extractor_weights_path=buffer)
    return _Unloaded("inception-v3-compat", features, feature_extractor_weights_path=buffer)


def _check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        parts += [f"{len(wrong)} of another shape (e.g. {wrong[0]})"] if wrong else []
        raise UserError(f"{OPTION} {path}: not torch-fidelity's Inception-v3 ({WEIGHTS_FILE}): keys " + "; ".join(parts))


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, sha256) of a weights file; tensors only (`weights_only=True`)."""
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise UserError(f"{OPTION} {path}: not a readable weights file ({type(error).__name__}: {first_line})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{OPTION} {path}: expected a dictionary of tensors (a state dict)")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, sha256


@contextmanager
def exact_float32() -> Iterator[None]:
    """No TF32 in convolutions and matmuls (CUDA enables it for cuDNN convolutions by default)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures:
    """uint8 NCHW images -> (pool 2048, spatial 2023, unbiased logits 1008), float32, on `device`."""

    name = "inception"  # the extractor name statistics files and caches record
    dim = POOL_DIM
    spatial_dim = SPATIAL_DIM
    has_logits = True

    def __init__(self, state: dict[str, torch.Tensor], sha256: str, path: Path | None = None,
                 device: torch.device | str = "cpu"):
        self.model = _architecture(["2048", "logits_unbiased"], meta=True)
        _check_keys(state, self.model.state_dict(), path or Path("<state dict>"))
        self.model.load_state_dict(state, strict=True, assign=True)
        self.model.requires_grad_(False).eval()
        self.device = torch.device(device)
        self.model.to(self.device)
        self.sha256 = sha256
        self.path = path
        self._spatial: torch.Tensor | None = None
        self.model.get_submodule(SPATIAL_MODULE).register_forward_hook(self._keep_spatial)

    @classmethod
    def load(cls, weights: Path | str | None, device: torch.device | str = "cpu") -> "InceptionFeatures":
        path = find_weights(weights)
        state, sha256 = read_weights(path)
        return cls(state, sha256, path, device)

    @property
    def is_release(self) -> bool:
        return self.sha256.startswith(RELEASE_SHA256_PREFIX)

    def _keep_spatial(self, module, inputs, output) -> None:
        # (B, 192, 17, 17) -> first 7 channels, TF's (h, w, c) order, flattened.
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(output.shape[0], -1).float()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        with exact_float32():
            pool, logits = self.model(images.to(self.device, non_blocking=True))
        spatial, self._spatial = self._spatial, None
        return pool, spatial, logits

    def describe(self) -> dict:
        import torch_fidelity

        return {
            "kind": "inception",
            "name": "torch-fidelity FeatureExtractorInceptionV3 (TF Inception-v3 2015-12-05, as ADM's classify_image_graph_def.pb)",
            "torch_fidelity": torch_fidelity.__version__,
            "weights_path": str(self.path) if self.path else None,
            "weights_sha256": self.sha256,
            "release_weights": self.is_release,
            "input": "uint8 RGB; TF1 bilinear resize to 299x299 (align_corners=False); (x - 128) / 128; float32, no TF32",
            "fid_features": "pool_3 (2048)",
            "sfid_features": "mixed_6/conv (Mixed_6d.branch1x1 after ReLU), first 7 channels, 17x17x7 = 2023, (h, w, c) order",
            "is_logits": "pool_3 @ softmax weights, no bias (1008 classes)",
            "device": str(self.device),
        }


def random_inception_weights(path: Path | str, seed: int = 0) -> Path:
    """Save an untrained torch-fidelity Inception-v3 state dict with usable activations (tests, benchmarks).

    The default initialisation shrinks activations ~6x per layer (pool features ~1e-8). Batch-norm
    statistics are therefore set from one batch of generated images (noise, smooth colour fields and
    flat blocks with sharp edges, so that each layer outputs roughly unit-scale activations on
    ordinary pictures too), and the softmax weights are scaled to spread logits over a few units.
    """
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = _architecture(["2048"])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics exactly
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, 64, 64, generator=generator) * 255
    smooth = F.interpolate(torch.rand(1, 3, 4, 4, generator=generator) * 255, size=64, mode="bilinear")
    blocks = F.interpolate(torch.rand(1, 3, 2, 2, generator=generator) * 255, size=64, mode="nearest")
    images = torch.cat([noise, smooth, blocks]).round().clamp(0, 255).to(torch.uint8)
    model.train()
    with torch.no_grad():
        (pool,) = model(images)  # normalised with these very batch statistics, which BN now keeps
        logits = pool @ model.fc.weight.T
        model.fc.weight.mul_(1.0 / float(logits.std().clamp_min(1e-12)))
    model.eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(state, path)
    return path
