"""`sendvae recon`: how well VAEs reconstruct images, side by side.

For every `--vae` (probe's `[LABEL=]REF`), each image of DATA (ADM centre crop at the
resolution) is encoded, its posterior mean decoded, and the reconstruction rounded to whole
levels in [0, 255] as if saved as a PNG. Per image: MSE, PSNR, SSIM (`image_quality`), LPIPS
(VGG, `vae/lpips.py`) and the extractor's feature of the reconstruction. The originals' features
go through the same extractor once per DATA; rFID (Inception) or rFD (a teacher) is the Fréchet
distance between the two feature sets.

Caches (resumable, crash-safe, identical bytes for any number of processes; `encode_rows` +
`RowCache`, the rows split over `torchrun` ranks):

    CACHE/DATA-RESpx-originals-EXTRACTOR-DIGEST.h5   features (N, D) float32 of the originals
    CACHE/DATA-RESpx-recon-DIGEST.h5                 mse, psnr, ssim (float64), lpips (float32),
                                                     features (N, D) float32 of the reconstructions

Each name holds a digest of everything that decides its contents (the VAE's weights digest, the
resolution, the images and their order, the extractor and its weights, LPIPS's weights), so the
same VAE under another label or path reuses its rows. Then rank 0 reduces each VAE's rows to its
figures (OUT/results/LABEL.json, reused while the caches are the same), writes
OUT/images/LABEL.png (originals over reconstructions), OUT/recon.json, and prints a table.

An exact reconstruction has PSNR = +inf, which JSON cannot hold: `psnr` is the mean over images
reconstructed inexactly, `identical_images` counts the others, and when every image is exact
`psnr` is null and `psnr_note` is "identical".
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from sendvae_cli.caches import encode_rows
from sendvae_cli.io import write_result_json
from sendvae_cli.caches.h5rows import ArraySpec, RowCache, fingerprint
from sendvae_cli.errors import UserError, WeightsNotFound
from sendvae_cli.eval.extractors import INCEPTION, metric_name
from sendvae_cli.eval.frechet import Gaussian, Moments, frechet_distance
from sendvae_cli.eval.image_quality import psnr, ssim
from sendvae_cli.eval.requests import FeatureRequest, check_labels, saved_result, slug
from sendvae_cli.images import save_png, to_levels, to_model_range

PRODUCER = "sendvae recon"
FORMAT = "sendvae-recon-rows"
PREVIEW_IMAGES = 8
READ_ROWS = 4096  # rows of features read at once when reducing a cache

PROTOCOL = {
    "reconstruction": "decode(posterior mean) of the image in [-1, 1]; clamped and rounded to whole levels in "
                      "[0, 255] (as a saved PNG); the original is the uint8 image after ADM centre crop",
    "psnr": "10 log10(255^2 / MSE) per image on [0, 255] (torchmetrics, float64), mean over images; "
            "exact reconstructions (+inf) counted in identical_images and left out of the mean",
    "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, L 255, per channel, mean over the positions where "
            "the window fits (torchmetrics' SSIM map; scikit-image's definition), mean over images",
    "lpips": "LPIPS v0.1, VGG16 (sendvae_cli/vae/lpips.py) on the rounded images mapped to [-1, 1], mean over images",
    "fd": "Fréchet distance (float64) between the extractor features of the reconstructions and of the originals",
}


@dataclass
class ReconOptions:
    data: str
    requests: list[FeatureRequest]
    out: Path
    extractor: str = INCEPTION
    inception_weights: Path | None = None
    teacher_weights: Path | None = None
    lpips: bool = True
    lpips_vgg_weights: Path | None = None
    lpips_lin_weights: Path | None = None
    random_weights: bool = False  # VAE bases by name, the extractor and LPIPS untrained: smoke runs
    root: Path | None = None
    resolution: int | None = None  # None: the exported VAEs' training resolution, else 256
    num_images: int | None = None
    seed: int = 0
    strict: bool = False
    cache_dir: Path | None = None  # None: OUT/cache
    batch_size: int | None = None  # None: 32 on GPU, 8 on CPU
    workers: int = 4
    device: str = "auto"
    block_rows: int = 1024
    quiet: bool = False


@dataclass
class Reconstructor:
    """A frozen VAE and what identifies it."""

    request: FeatureRequest
    module: torch.nn.Module
    reconstruct: Callable[[torch.Tensor], torch.Tensor]  # [-1, 1] images -> [-1, 1] reconstructions
    downsample: int
    latent_shape: Callable[[int], tuple[int, int, int]]
    identity: dict[str, Any] = field(default_factory=dict)  # weights_sha256, vae_config, provenance


#################################################################################
#                         Opening VAEs, extractor, LPIPS                        #
#################################################################################


def open_reconstructor(request: FeatureRequest, registry, *, seed: int = 0, random_weights: bool = False) -> Reconstructor:
    from sendvae_cli.provenance import weights_sha256
    from sendvae_cli.vae.autoencoder import config_name
    from sendvae_cli.vae.open import open_frozen_vae

    loaded = open_frozen_vae(request.ref, registry, seed=seed, random_weights=random_weights)
    model = loaded.model
    config = loaded.config

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        return model.decode(model.encode(x).mean)

    identity = {"vae_config": config_name(config) or config.describe(), "weights_sha256": weights_sha256(model),
                "provenance": json.loads(json.dumps(loaded.provenance, default=str))}
    return Reconstructor(request, model, reconstruct, config.downsample, config.latent_shape, identity)


def check_resolution(rec: Reconstructor, resolution: int) -> None:
    if resolution % rec.downsample:
        raise UserError(f"{rec.request.option} {rec.request.ref}: downsamples by {rec.downsample}, which does not "
                        f"divide --resolution {resolution}; pass a multiple of {rec.downsample}")


def open_lpips(options: ReconOptions):
    from sendvae_cli.vae.lpips import LPIPS

    if not options.lpips:
        return None
    try:
        with torch.random.fork_rng(devices=[]):  # random weights are seeded: a rerun finds its cache
            torch.manual_seed(options.seed)
            return LPIPS(options.lpips_vgg_weights, options.lpips_lin_weights, random_weights=options.random_weights)
    except WeightsNotFound as error:
        raise WeightsNotFound(f"{error}; or pass --no-lpips to leave LPIPS out") from None


#################################################################################
#                                 The caches                                    #
#################################################################################


def _describe_extractor(extractor) -> dict[str, Any]:
    return {"name": extractor.name, "weights_sha256": extractor.sha256, "dim": extractor.dim}


def originals_config(extractor, identity: dict[str, Any], resolution: int) -> dict[str, Any]:
    return {"producer": PRODUCER, "rows": "originals", "resolution": resolution,
            "extractor": _describe_extractor(extractor), **identity}


def recon_config(rec: Reconstructor, extractor, lpips_sha256: str | None, identity: dict[str, Any],
                 resolution: int) -> dict[str, Any]:
    return {"producer": PRODUCER, "rows": "reconstructions", "resolution": resolution,
            "vae": {k: v for k, v in rec.identity.items() if k != "provenance"},
            "extractor": _describe_extractor(extractor), "lpips_sha256": lpips_sha256, **identity}


def _to_uint8(levels: torch.Tensor) -> torch.Tensor:
    return levels.to(torch.uint8)


def encode_originals(source, extractor, out: Path, config: dict[str, Any], dist, *, batch_size: int,
                     workers: int, block_rows: int, show: bool) -> int:
    from sendvae_cli import __version__

    cache = RowCache(out, len(source), {"features": ArraySpec((extractor.dim,), "float32")}, config,
                     block_rows=block_rows)
    if encode_rows.already_complete(cache, dist, show=False):
        return 0
    encode_rows.prepare(cache, dist)

    def step(x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        features = extractor(_to_uint8(to_levels(x)))[0]
        return {"features": features.float().cpu().numpy()}

    computed = encode_rows.fill(cache, source, dist, step, batch_size=batch_size, workers=workers,
                                label=f"{extractor.name} features: originals", show=show)
    encode_rows.finish(cache, dist, {"format": FORMAT, "producer": PRODUCER, "producer_version": __version__,
                                     "rows_kind": "originals"}, show=False)
    return computed


#################################################################################
#                  What is measured on each (reconstruction, original)           #
#################################################################################


@dataclass(frozen=True)
class PairMetric:
    """A figure measured on every (reconstruction, original) pair, cached as one row per image."""

    key: str  # its array in the recon cache
    spec: ArraySpec
    measure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # levels (B, 3, H, W) twice -> (B, ...) rows


def pair_metrics(extractor, lpips) -> list[PairMetric]:
    """The recon cache's arrays, in their order: each row's checksum runs over them in this order."""
    metrics = [
        PairMetric("mse", ArraySpec((), "float64"), lambda r, o: (r - o).pow(2).mean(dim=(1, 2, 3))),
        PairMetric("psnr", ArraySpec((), "float64"), psnr),
        PairMetric("ssim", ArraySpec((), "float64"), ssim),
        # rFD's half: the Fréchet distance to the originals' features is taken over all rows at the end.
        PairMetric("features", ArraySpec((extractor.dim,), "float32"),
                   lambda r, o: extractor(_to_uint8(r))[0].float()),
    ]
    if lpips is not None:
        metrics.append(PairMetric("lpips", ArraySpec((), "float32"),
                                  lambda r, o: lpips(to_model_range(r), to_model_range(o)).float()))
    return metrics


def encode_reconstructions(source, rec: Reconstructor, extractor, lpips, out: Path, config: dict[str, Any], dist, *,
                           batch_size: int, workers: int, block_rows: int, show: bool) -> int:
    from sendvae_cli import __version__

    metrics = pair_metrics(extractor, lpips)
    cache = RowCache(out, len(source), {m.key: m.spec for m in metrics}, config, block_rows=block_rows)
    if encode_rows.already_complete(cache, dist, show=False):
        return 0
    encode_rows.prepare(cache, dist)
    module = rec.module.to(dist.device)

    def step(x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        recon = rec.reconstruct(x).float()
        if not torch.isfinite(recon).all():
            raise UserError(f"{rec.request.option} {rec.request.ref}: gave non-finite reconstructions in a batch of "
                            f"{len(x)} images")
        if recon.shape != x.shape:
            raise UserError(f"{rec.request.option} {rec.request.ref}: reconstructs {tuple(x.shape[1:])} images as "
                            f"{tuple(recon.shape[1:])}")
        r, o = to_levels(recon), to_levels(x)
        return {m.key: m.measure(r, o).cpu().numpy() for m in metrics}

    computed = encode_rows.fill(cache, source, dist, step, batch_size=batch_size, workers=workers,
                                label=f"reconstructions {rec.request.label}", show=show)
    module.cpu()
    encode_rows.finish(cache, dist, {"format": FORMAT, "producer": PRODUCER, "producer_version": __version__,
                                     "rows_kind": "reconstructions", "vae_ref": rec.request.ref,
                                     "weights_sha256": rec.identity.get("weights_sha256", "")}, show=False)
    return computed


#################################################################################
#                              Where the rows go                                #
#################################################################################


def cache_path(cache_dir: Path, data: str, resolution: int, kind: str, config: dict[str, Any]) -> Path:
    return Path(cache_dir) / f"{slug(data)}-{resolution}px-{kind}-{fingerprint(config)[:12]}.h5"


def feature_gaussian(path: Path) -> Gaussian:
    """Mean and covariance (float64) of a cache's `features`, read in slabs."""
    with h5py.File(path, "r") as f:
        features = f["features"]
        moments = Moments(features.shape[1])
        for lo in range(0, features.shape[0], READ_ROWS):
            moments.update(torch.from_numpy(features[lo: lo + READ_ROWS]))
    return moments.gaussian()


#################################################################################
#                           Reducing rows to figures                            #
#################################################################################


def psnr_summary(values: np.ndarray) -> dict[str, Any]:
    """Mean PSNR over inexact reconstructions, and how many were exact (PSNR = +inf)."""
    values = np.asarray(values, dtype=np.float64)
    exact = int(np.isposinf(values).sum())
    finite = values[np.isfinite(values)]
    return {"psnr": float(finite.mean()) if finite.size else None,
            "identical_images": exact,
            "psnr_note": "identical" if exact == values.size else None}


def mse_summary(values: np.ndarray) -> dict[str, Any]:
    """Mean MSE, and the PSNR of that mean (None when every reconstruction is exact)."""
    mean = float(np.mean(values))
    return {"mse": mean, "psnr_of_mean_mse": 10.0 * math.log10(255.0 ** 2 / mean) if mean > 0 else None}


# recon.json's figures, in its order (the table's columns first): a cached column -> its figures.
# A column the cache lacks (LPIPS left out) is None.
SUMMARIES: tuple[tuple[str, Callable[[np.ndarray | None], dict[str, Any]]], ...] = (
    ("psnr", psnr_summary),
    ("ssim", lambda values: {"ssim": float(np.mean(values))}),
    ("lpips", lambda values: {"lpips": float(np.mean(values, dtype=np.float64)) if values is not None else None}),
    ("mse", mse_summary),
)


def reduce_rows(path: Path, reference: Gaussian) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        columns = {key: f[key][:] if key in f else None for key, _ in SUMMARIES}
    metrics: dict[str, Any] = {}
    for key, summarise in SUMMARIES:
        metrics.update(summarise(columns[key]))
    metrics["fd"] = frechet_distance(feature_gaussian(path), reference)
    return metrics


def preview(source, rec: Reconstructor, device: torch.device, path: Path, count: int = PREVIEW_IMAGES) -> Path:
    """A PNG: the first `count` originals over their reconstructions."""
    count = min(count, len(source))
    originals = torch.stack([source[i][0] for i in range(count)])
    module = rec.module.to(device)
    with torch.inference_mode():
        x = to_model_range(originals.to(device))
        recon = _to_uint8(to_levels(rec.reconstruct(x).float())).cpu()
    module.cpu()
    rows = [torch.cat(list(originals), dim=2), torch.cat(list(recon), dim=2)]  # (3, H, count * W) each
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).contiguous().numpy()
    return save_png(grid, path)


#################################################################################
#                                 The command                                   #
#################################################################################


def _open_source(options: ReconOptions, registry, resolution: int):
    from sendvae_cli.data.open import open_images

    source = open_images(options.data, registry=registry, resolution=resolution, num_images=options.num_images,
                         seed=options.seed, strict=options.strict, root=str(options.root) if options.root else None)
    if len(source) < 2:
        raise UserError(f"DATA {options.data}: {len(source)} image(s); a Fréchet distance needs at least 2")
    return source


def _open_reconstructors(options: ReconOptions, registry, requests: list[FeatureRequest],
                         reconstructors: list[Reconstructor] | None, resolution: int) -> list[Reconstructor]:
    """Every VAE, its geometry checked before the long part starts."""
    if reconstructors is None:
        reconstructors = []
        for request in requests:
            rec = open_reconstructor(request, registry, seed=options.seed, random_weights=options.random_weights)
            check_resolution(rec, resolution)
            reconstructors.append(rec)
    else:
        for rec in reconstructors:
            check_resolution(rec, resolution)
    return reconstructors


def _open_measures(options: ReconOptions, registry, dist, extractor, lpips):
    """The feature extractor and LPIPS (prepared ones are kept), with a warning where figures won't compare."""
    from sendvae_cli.eval.extractors import open_extractor
    from sendvae_cli.progress import warn

    if extractor is None:
        extractor = open_extractor(options.extractor, registry=registry, device=dist.device,
                                   inception_weights=options.inception_weights,
                                   teacher_weights=options.teacher_weights, random_weights=options.random_weights,
                                   seed=options.seed)
    if lpips is None and options.lpips:
        lpips = open_lpips(options)
    if lpips is not None:
        lpips = lpips.to(dist.device)
    if options.random_weights and dist.is_main:
        warn("--random-weights: VAE bases given by name, the extractor and LPIPS are untrained; a smoke test, "
             "the figures mean nothing")
    elif not extractor.is_release and dist.is_main:
        warn(f"extractor {extractor.name}: not its release weights (sha256 {extractor.sha256[:12]}...); "
             f"rFID/rFD figures are not comparable with published ones")
    return extractor, lpips


def _encode_all(options: ReconOptions, source, reconstructors: list[Reconstructor], extractor, lpips,
                lpips_sha: str | None, dist, resolution: int) -> tuple[Path, list[tuple[Reconstructor, Path]]]:
    """The originals' cache and each VAE's recon cache, encoded where missing: (originals, [(rec, path)])."""
    import gc

    from sendvae_cli.eval.requests import data_name, source_identity
    from sendvae_cli.progress import info

    show = dist.is_main and not options.quiet
    cache_dir = Path(options.cache_dir or Path(options.out) / "cache")
    batch_size = options.batch_size or (32 if dist.device.type == "cuda" else 8)
    identity = source_identity(source)
    name = data_name(options.data)
    if dist.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
    common = dict(batch_size=batch_size, workers=options.workers, block_rows=options.block_rows, show=show)

    config = originals_config(extractor, identity, resolution)
    originals = cache_path(cache_dir, name, resolution, f"originals-{slug(extractor.name)}", config)
    computed = encode_originals(source, extractor, originals, config, dist, **common)
    info(f"originals: {'encoded ' + str(computed) + ' images into' if computed else 'reusing'} {originals}", show)
    entries = []
    for rec in reconstructors:
        config = recon_config(rec, extractor, lpips_sha, identity, resolution)
        path = cache_path(cache_dir, name, resolution, "recon", config)
        started = time.perf_counter()
        computed = encode_reconstructions(source, rec, extractor, lpips, path, config, dist, **common)
        seconds = time.perf_counter() - started
        info(f"{rec.request.label}: {'reconstructed ' + str(computed) + ' images into' if computed else 'reusing'} "
             f"{path}" + (f" ({seconds:.1f} s)" if computed else ""), show)
        entries.append((rec, path))
        gc.collect()
    return originals, entries


def _result(out: Path, rec: Reconstructor, path: Path, originals: Path, reference: Gaussian, fd_key: str,
            source, resolution: int, device: torch.device) -> dict[str, Any]:
    """One VAE's OUT/results/LABEL.json (reused while its caches are the same) and its preview image."""
    key = fingerprint({"rows": path.name, "originals": originals.name})
    saved = out / "results" / f"{slug(rec.request.label)}.json"
    image = out / "images" / f"{slug(rec.request.label)}.png"
    record, fresh = saved_result(saved, key), False
    if record is None:
        metrics = reduce_rows(path, reference)
        metrics[fd_key] = metrics.pop("fd")
        c, h, w = rec.latent_shape(resolution)
        record = {"key": key, "label": rec.request.label, "ref": rec.request.ref, "vae": rec.identity,
                  "latent_shape": [c, h, w], "images": len(source), "cache": str(path), "metrics": metrics}
        saved.parent.mkdir(parents=True, exist_ok=True)
        write_result_json(saved, record, default=float)
        fresh = True
    if fresh or not image.is_file():
        preview(source, rec, device, image)
    return record


def run_recon(options: ReconOptions, registry, *, reconstructors: list[Reconstructor] | None = None,
              extractor=None, lpips=None) -> dict[str, Any] | None:
    """Encode, reconstruct, measure, compare; returns the summary written to OUT/recon.json (None on ranks > 0).

    `reconstructors`, `extractor`, `lpips`: prepared ones (tests); by default they come from the options.
    """
    from sendvae_cli import __version__, distributed
    from sendvae_cli.eval.requests import common_resolution
    from sendvae_cli.provenance import weights_sha256

    requests = [r.request for r in reconstructors] if reconstructors is not None else options.requests
    if not requests:
        raise UserError("--vae: missing; pass the VAE(s) to measure (repeat --vae to compare)")
    check_labels(requests)
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    dist = distributed.init(options.device)
    resolution = common_resolution(requests, options.resolution)
    source = _open_source(options, registry, resolution)  # data errors come before any model is built
    reconstructors = _open_reconstructors(options, registry, requests, reconstructors, resolution)
    extractor, lpips = _open_measures(options, registry, dist, extractor, lpips)
    lpips_sha = weights_sha256(lpips) if lpips is not None else None
    originals, entries = _encode_all(options, source, reconstructors, extractor, lpips, lpips_sha, dist, resolution)
    if not dist.is_main:
        return None

    reference = feature_gaussian(originals)
    fd_key = "rfid" if extractor.name == INCEPTION else "rfd"
    results = [_result(out, rec, path, originals, reference, fd_key, source, resolution, dist.device)
               for rec, path in entries]
    summary = {
        "producer": f"sendvae {__version__} recon",
        "data": options.data,
        "root": str(options.root) if options.root else None,
        "num_images": len(source),
        "resolution": resolution,
        "seed": options.seed,
        "extractor": extractor.name,
        "fd_name": "r" + metric_name(extractor.name),
        "fd_key": fd_key,
        "extractor_details": extractor.describe(),
        "lpips": None if lpips is None else {"weights_sha256": lpips_sha, "random_weights": options.random_weights},
        "protocol": PROTOCOL,
        "originals_cache": str(originals),
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_result_json(out / "recon.json", summary, default=float)
    return summary


#################################################################################
#                                 Presenting                                    #
#################################################################################


def _show(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def recon_table(summary: dict[str, Any]):
    from rich.table import Table

    fd_name = summary["fd_name"]
    table = Table(title=f"Reconstruction: {Path(str(summary['data'])).name} at {summary['resolution']} px, "
                        f"{summary['num_images']} images; {fd_name} through {summary['extractor']}",
                  title_justify="left")
    for column in ("VAE", "latent", "PSNR ↑", "SSIM ↑", "LPIPS ↓", f"{fd_name} ↓"):
        table.add_column(column, justify="left" if column == "VAE" else "right")
    for r in summary["results"]:
        m = r["metrics"]
        if m["psnr_note"] == "identical":
            shown = "∞ (identical)"
        else:
            shown = _show(m["psnr"], 2) + (f" (+{m['identical_images']} exact)" if m["identical_images"] else "")
        table.add_row(r["label"], "x".join(map(str, r["latent_shape"])), shown, _show(m["ssim"], 4),
                      _show(m["lpips"], 4), _show(m[summary["fd_key"]], 4))
    return table
