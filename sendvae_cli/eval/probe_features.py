"""What a probe is trained on: one feature vector per image, cached once per (features, images).

A feature source is written on the command line as (`requests.parse_request`)

    [LABEL=]REF               after --vae: any VAE `open_vae` reads (export folder, base name, .pt, diffusers)
    [LABEL=]vae:REF           the same, after --features
    [LABEL=]teacher:NAME      a registered teacher, after --features

and gives, per image at the probe's resolution (ADM centre crop):

    vae      the posterior mean, flattened C*H*W (8,192 for f16d32 at 256 px): the paper's probe input
    teacher  the patch tokens averaged over positions (the teacher's width): a reference point

Features go into an HDF5 cache in the cache folder, written through `encode_rows` + `RowCache`
(resumable, crash-safe, identical bytes for any number of processes). The file name holds a
digest of everything that determines its contents: the weights (SHA-256 of the state dict, so
the same VAE under two labels or paths shares one cache), the resolution, the data source and
its row order. Probing the same VAE again with other probe settings therefore reads the cache
and trains in seconds.

Layout: `features` (N, D) float16, chunks of one row; `attributes` (N, A) uint8; `split` (N,)
int8 (0 train, 1 val, 2 test); `rows` (N,) row identifiers; attributes `attribute_names`,
`feature_kind`, `feature_ref`, `feature_dim`, `resolution`, `source`, `row_order_sha256`,
`weights_sha256`, plus the `complete` flag and configuration every `RowCache` file carries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from sendvae_cli.caches import encode_rows
from sendvae_cli.caches.h5rows import ArraySpec, RowCache, fingerprint
from sendvae_cli.data.source import SPLITS, ImageSource
from sendvae_cli.distributed import Dist, autocast_for
from sendvae_cli.errors import UserError
from sendvae_cli.eval.requests import FeatureRequest, slug
from sendvae_cli.provenance import weights_sha256

FORMAT = "sendvae-probe-features"
PRODUCER = "sendvae probe"


#################################################################################
#                      Turning images into feature vectors                      #
#################################################################################


@dataclass
class Featurizer:
    """A frozen model and how it makes one vector per image."""

    request: FeatureRequest
    module: torch.nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]  # [-1, 1] images (B, 3, R, R) -> (B, D)
    dim: Callable[[int], int]  # resolution -> D
    resolution: int  # the resolution the probe uses for this source
    identity: dict[str, Any]  # what decides the features besides the images
    precision: str  # "fp32" or "bf16" (autocast)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.request.kind, "ref": self.request.ref, "label": self.request.label,
                "dim": self.dim(self.resolution), "resolution": self.resolution, **self.identity}


def _vae_featurizer(request: FeatureRequest, registry, *, resolution: int, seed: int,
                    random_weights: bool) -> Featurizer:
    from sendvae_cli.vae.autoencoder import config_name
    from sendvae_cli.vae.open import open_frozen_vae

    loaded = open_frozen_vae(request.ref, registry, seed=seed, random_weights=random_weights)
    model = loaded.model
    config = loaded.config
    if resolution % config.downsample:
        raise UserError(f"--resolution {resolution}: does not fit {request.option} {request.ref} "
                        f"(downsampling {config.downsample}: expected a multiple of {config.downsample})")

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model.encode(x).mean.flatten(1)

    def dim(res: int) -> int:
        c, h, w = config.latent_shape(res)
        return c * h * w

    identity = {"vae_config": config_name(config) or config.describe(), "weights_sha256": weights_sha256(model),
                "provenance": json.loads(json.dumps(loaded.provenance, default=str))}
    return Featurizer(request, model, forward, dim, resolution, identity, "fp32")


def _teacher_featurizer(request: FeatureRequest, registry, *, resolution: int, seed: int,
                        random_weights: bool, teacher_weights: Path | None = None) -> Featurizer:
    spec = registry.teacher(request.ref)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = spec.build(weights=teacher_weights, random_weights=random_weights and teacher_weights is None)
    teacher.eval().requires_grad_(False)
    teacher.token_grid(resolution)  # raises for a size the teacher cannot take

    def forward(x: torch.Tensor) -> torch.Tensor:
        return teacher(x).float().mean(dim=1)

    # The weights' digest says everything about them: the same weights from a file or from a
    # seeded random init share a cache.
    identity = {"teacher": spec.name, "weights_sha256": weights_sha256(teacher), "pooling": "mean over patch tokens"}
    return Featurizer(request, teacher, forward, lambda _res: teacher.width, resolution, identity, "auto")


def open_featurizer(request: FeatureRequest, registry, *, resolution: int, seed: int = 0,
                    random_weights: bool = False, teacher_weights: Path | None = None) -> Featurizer:
    """`teacher_weights`: a local weights file or folder for a teacher (no effect on VAEs)."""
    try:
        if request.kind == "vae":
            return _vae_featurizer(request, registry, resolution=resolution, seed=seed, random_weights=random_weights)
        return _teacher_featurizer(request, registry, resolution=resolution, seed=seed,
                                   random_weights=random_weights, teacher_weights=teacher_weights)
    except ValueError as error:  # a teacher refusing the image size
        raise UserError(f"{request.option} {request.kind}:{request.ref}: {error}") from None


#################################################################################
#                                 The cache                                     #
#################################################################################


def check_attribute_source(source: ImageSource, data: str, num_images: int | None = None) -> None:
    """A probe needs attributes and rows in each of the train, val and test splits."""
    try:
        codes = source.split_codes() if source.attribute_names else None
    except NotImplementedError:
        codes = None
    if codes is None or len(codes) != len(source):
        raise UserError(f"DATA {data}: has no attributes with train/val/test splits; probe an attribute dataset "
                        f"(celeba, deepfashion, awa, shapes) or a CSV of image paths and attribute columns")
    counts = np.bincount(codes, minlength=len(SPLITS))
    if not counts.all():
        empty = SPLITS[int(np.flatnonzero(counts == 0)[0])]
        raise UserError(f"DATA {data}: the {empty} split has no rows ({len(source)} images: "
                        f"{'/'.join(map(str, counts))} train/val/test); the probe needs all three"
                        + ("; use more --num-images" if num_images else ""))


def cache_config(featurizer: Featurizer, identity: dict[str, Any]) -> dict[str, Any]:
    return {
        "producer": PRODUCER,
        "features": {k: v for k, v in featurizer.describe().items() if k not in ("label", "ref", "provenance")},
        **identity,
        "dtype": "float16",
    }


def cache_path(cache_dir: Path, config: dict[str, Any], featurizer: Featurizer, data_name: str) -> Path:
    digest = fingerprint(config)[:12]
    return Path(cache_dir) / f"{slug(data_name)}-{featurizer.resolution}px-{featurizer.request.kind}-{digest}.h5"


def encode_features(source: ImageSource, featurizer: Featurizer, out: Path, config: dict[str, Any], dist: Dist, *,
                    batch_size: int, workers: int, block_rows: int, show: bool) -> int:
    """Write (or finish) the feature cache `out` of configuration `config` (`cache_config`); returns how
    many rows were computed now."""
    from sendvae_cli import __version__

    dim = featurizer.dim(featurizer.resolution)
    cache = RowCache(out, len(source), {"features": ArraySpec((dim,), "float16")}, config, block_rows=block_rows)
    if encode_rows.already_complete(cache, dist, show=False):
        return 0
    encode_rows.prepare(cache, dist)
    module = featurizer.module.to(dist.device)
    precision = featurizer.precision

    def step(x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        with autocast_for(dist.device, precision):
            features = featurizer.forward(x).float()
        if not torch.isfinite(features).all() or features.abs().max() > 65504:
            raise UserError(f"{featurizer.request.option} {featurizer.request.ref}: gave non-finite features (or "
                            f"values beyond float16's range) in a batch of {len(x)} images")
        return {"features": features.to(torch.float16).cpu().numpy()}

    computed = encode_rows.fill(cache, source, dist, step, batch_size=batch_size, workers=workers,
                                label=f"features {featurizer.request.label}", show=show)
    module.cpu()
    extra = None
    if dist.is_main:
        extra = {"attributes": source.attribute_matrix().astype(np.uint8),
                 "split": source.split_codes().astype(np.int8),
                 "rows": np.array(source.row_ids(), dtype=object)}
    attrs = {
        "format": FORMAT,
        "producer": PRODUCER,
        "producer_version": __version__,
        "feature_kind": featurizer.request.kind,
        "feature_ref": featurizer.request.ref,
        "feature_dim": dim,
        "features": json.dumps(featurizer.describe(), sort_keys=True, default=str),
        "weights_sha256": featurizer.identity["weights_sha256"],
        "resolution": featurizer.resolution,
        "attribute_names": json.dumps(list(source.attribute_names)),
        "source": json.dumps(config["source"], sort_keys=True),
        "row_order_sha256": config["row_order_sha256"],
    }
    encode_rows.finish(cache, dist, attrs, extra=extra, show=False)
    return computed


@dataclass
class ProbeFeatures:
    """A finished feature cache, open for reading (`features` stays on disk)."""

    path: Path
    file: h5py.File
    features: h5py.Dataset
    attributes: np.ndarray
    split: np.ndarray
    attribute_names: list[str]
    attrs: dict[str, Any]

    def close(self) -> None:
        self.file.close()


def open_feature_cache(path: Path) -> ProbeFeatures:
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise UserError(f"{path}: not a readable HDF5 file ({error}); delete it to encode again") from None
    attrs = dict(f.attrs)
    if attrs.get("format") != FORMAT or not attrs.get("complete", False):
        f.close()
        raise UserError(f"{path}: not a finished probe feature cache; delete it to encode again")
    return ProbeFeatures(path, f, f["features"], f["attributes"][:], f["split"][:],
                        json.loads(attrs["attribute_names"]), attrs)
