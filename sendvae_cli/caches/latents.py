"""`sendvae cache-latents`: the VAE posterior of every image into a resumable HDF5 latent cache.

Layout (docs/formats.md, "Latent cache"): `mean`, `std` (N, C, H, W) float16, chunks of one
row; with `--flip` also `mean_flip`, `std_flip` (the posterior of the horizontally flipped
image); `labels` (N,) int64; `rows` (N,) row identifiers; attributes for the format, producer,
VAE identity (with a SHA-256 of its weights), resolution, latent shape, data source and row
order, and per-channel statistics over the whole cache (see `latent_dataset.LatentMoments`).

Writing goes through `encode_rows` + `h5rows.RowCache` (resumable, crash-safe, independent of
the number of processes); the statistics are accumulated while rank 0 merges the blocks, in one
streaming pass over exactly the stored float16 values.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sendvae_cli import distributed
from sendvae_cli.caches import encode_rows
from sendvae_cli.caches.h5rows import ArraySpec, RowCache, parts_progress
from sendvae_cli.caches.latent_dataset import (ARRAYS, FLIP_ARRAYS, FORMAT, LatentMoments, detect_layout, open_h5,
                                             read_attrs, repae_keys)
from sendvae_cli.data.source import ImageSource
from sendvae_cli.distributed import autocast_for
from sendvae_cli.errors import UserError
from sendvae_cli.locks import hold_output_lock
from sendvae_cli.provenance import weights_sha256

PRODUCER = "sendvae cache-latents"
COMPRESSIONS = ("gzip", "lzf")
STATS_DEFINITION = ("per channel, over every row, both views and every position: moments of z = mean + std*eps; "
                    "latent_mean = E[mean], latent_std = sqrt(Var[mean] + E[std^2]) (population, float64, "
                    "from the stored float16 values)")


@dataclass
class CacheLatentsOptions:
    vae: str = "tiny"
    vae_weights: Path | None = None
    random_weights: bool = False
    seed: int = 0
    flip: bool = False
    batch_size: int | None = None  # None: 64 on GPU, 16 on CPU
    workers: int = 4
    device: str | None = None
    precision: str = "auto"  # auto = fp32: bf16 keeps fewer mantissa bits than the stored float16
    block_rows: int = 1024
    compression: str | None = None
    quiet: bool = False


def open_for_cache(options: CacheLatentsOptions, registry=None):
    """The VAE named by --vae (random weights seeded by --seed, so a resumed run gets the same ones)."""
    from sendvae_cli.vae.open import open_vae

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        loaded = open_vae(options.vae, registry, weights=options.vae_weights, random_weights=options.random_weights)
    loaded.model.eval().requires_grad_(False)
    return loaded


def vae_identity(loaded, options: CacheLatentsOptions) -> str:
    weights = loaded.provenance.get("weights")
    if loaded.provenance.get("format") == "random-init":
        return f"random(seed={options.seed})"
    return str(weights)


#################################################################################
#                                    Writing                                    #
#################################################################################


def layout_attrs(shape: tuple[int, ...], flip: bool) -> dict[str, Any]:
    return {"latent_shape": list(shape), "flip": flip, "views": 2 if flip else 1, "payload": "std"}


def observer(moments: LatentMoments):
    """The merge hook feeding every stored row, original and flipped, to `moments`."""

    def observe(name: str, values: np.ndarray) -> None:
        if name in ("mean", "mean_flip"):
            moments.add_means(values)
        elif name in ("std", "std_flip"):
            moments.add_stds(values)

    return observe


def stats_attrs(moments: LatentMoments) -> dict[str, Any]:
    mean, std = moments.result()
    mode_mean, mode_std = moments.mode()
    return {"latent_mean": mean, "latent_std": std, "mode_mean": mode_mean, "mode_std": mode_std,
            "stats_count": moments.count, "stats_definition": STATS_DEFINITION}


def write_latent_cache(out: Path, mean: np.ndarray, std: np.ndarray, labels: np.ndarray, *,
                       mean_flip: np.ndarray | None = None, std_flip: np.ndarray | None = None,
                       attrs: dict[str, Any] | None = None, block_rows: int = 1024,
                       compression: str | None = None) -> Path:
    """A latent cache from arrays in memory, through the same blocks, merge and statistics as
    `cache_latents` (benchmarks, tests, converters). `attrs` adds or overrides attributes."""
    out = Path(out)
    with hold_output_lock(out):
        return _write_latent_cache(out, mean, std, labels, mean_flip=mean_flip, std_flip=std_flip, attrs=attrs,
                                   block_rows=block_rows, compression=compression)


def _write_latent_cache(out, mean, std, labels, *, mean_flip, std_flip, attrs, block_rows, compression) -> Path:
    from sendvae_cli import __version__

    flip = mean_flip is not None
    shape = tuple(mean.shape[1:])
    arrays = {name: ArraySpec(shape, "float16") for name in ARRAYS + (FLIP_ARRAYS if flip else ())}
    arrays["labels"] = ArraySpec((), "int64")
    values = {"mean": mean, "std": std, "labels": labels}
    if flip:
        values.update(mean_flip=mean_flip, std_flip=std_flip)
    cache = RowCache(out, len(mean), arrays, {"producer": "write_latent_cache", **(attrs or {})},
                     block_rows=block_rows)
    cache.prepare(is_main=True)
    blocks = cache.open_blocks(0, 1)
    for block in blocks:
        block.write({k: np.asarray(v[block.start:block.stop]).astype(arrays[k].dtype) for k, v in values.items()})
        block.close()
    moments = LatentMoments(shape[0])
    cache.merge(lambda: {"format": FORMAT, "producer": "write_latent_cache", "producer_version": __version__,
                         **layout_attrs(shape, flip), "source": json.dumps({"kind": "arrays", "rows": len(mean)}),
                         **stats_attrs(moments), **(attrs or {})},
                compression=compression, observe=observer(moments))
    return out


def cache_latents(source: ImageSource, out: Path, options: CacheLatentsOptions, registry=None) -> dict[str, Any]:
    """Encode every row of `source` into `out`; returns a summary. Rank 0 holds the lock of `out`."""
    if options.compression not in (None, *COMPRESSIONS):
        raise UserError(f"--compression {options.compression}: expected gzip or lzf")
    if len(source) == 0:
        raise UserError("DATA: holds no images; nothing to cache")
    dist = distributed.init(options.device)
    with hold_output_lock(Path(out), enabled=dist.is_main):  # one writer per output
        return _cache_latents(source, Path(out), options, registry, dist)


def _cache_config(source: ImageSource, vae_config, digest: str, options: CacheLatentsOptions) -> dict[str, Any]:
    """Everything that decides the cache's rows: a rerun with another one is refused, not mixed in."""
    from sendvae_cli.vae.autoencoder import config_name

    return {
        "producer": PRODUCER,
        "vae_config": config_name(vae_config) or vae_config.describe(),
        "vae_weights_sha256": digest,
        "resolution": source.resolution,
        "source": source.describe(),
        "row_order_sha256": source.row_order_sha256(),
        "flip": options.flip,
        "payload": "mean+std float16",
        "compression": options.compression,
    }


def _encode_step(model: torch.nn.Module, options: CacheLatentsOptions, device: torch.device):
    """A batch of images (and labels) -> the cache's rows: posterior mean and std in float16, per view."""

    def step(x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        count = len(labels)
        if options.flip:
            x = torch.cat([x, x.flip(-1)])
        with autocast_for(device, "fp32" if options.precision == "auto" else options.precision):
            posterior = model.encode(x)
        mean = posterior.mean.float().to(torch.float16)
        std = posterior.std.float().to(torch.float16)
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise UserError(f"--vae {options.vae}: the encoder gave non-finite latents (or values beyond float16's "
                            f"range) in a batch of {count} images; is it a working VAE?")
        mean, std = mean.cpu().numpy(), std.cpu().numpy()
        rows = {"mean": mean[:count], "std": std[:count]}
        if options.flip:
            rows.update(mean_flip=mean[count:], std_flip=std[count:])
        rows["labels"] = labels.numpy().astype(np.int64)
        return rows

    return step


def _cache_attrs(source: ImageSource, loaded, options: CacheLatentsOptions, config: dict[str, Any],
                 shape: tuple[int, ...], moments: LatentMoments) -> dict[str, Any]:
    """The finished cache's attributes: what wrote it, its layout, and the latents' statistics."""
    from sendvae_cli import __version__

    vae_config = loaded.config
    a = {
        "format": FORMAT,
        "producer": PRODUCER,
        "producer_version": __version__,
        "vae": options.vae,
        "vae_config": config["vae_config"],
        "vae_architecture": json.dumps(vae_config.to_dict(), sort_keys=True),
        "vae_weights": vae_identity(loaded, options),
        "vae_weights_sha256": config["vae_weights_sha256"],
        "vae_provenance": json.dumps(loaded.provenance, sort_keys=True, default=str),
        "downsample": vae_config.downsample,
        "resolution": source.resolution,
        **layout_attrs(shape, options.flip),
        "source": json.dumps(source.describe(), sort_keys=True),
        "row_order_sha256": config["row_order_sha256"],
        **stats_attrs(moments),
    }
    if source.num_classes is not None:
        a["num_classes"] = int(source.num_classes)
    if source.class_names:
        a["class_names"] = json.dumps(list(source.class_names))
    if loaded.has_latent_stats:
        a["vae_latent_mean"] = loaded.latent_mean.double().numpy()
        a["vae_latent_std"] = loaded.latent_std.double().numpy()
    return a


def _cache_latents(source: ImageSource, out: Path, options: CacheLatentsOptions, registry, dist) -> dict[str, Any]:
    started = time.perf_counter()
    show = dist.is_main and not options.quiet
    batch_size = options.batch_size or (64 if dist.device.type == "cuda" else 16)
    loaded = open_for_cache(options, registry)
    vae_config = loaded.config
    if source.resolution % vae_config.downsample:
        raise UserError(f"--resolution {source.resolution}: expected a multiple of the VAE's downsampling "
                        f"{vae_config.downsample}")
    shape = tuple(vae_config.latent_shape(source.resolution))
    config = _cache_config(source, vae_config, weights_sha256(loaded.model), options)
    names = ARRAYS + (FLIP_ARRAYS if options.flip else ())
    arrays = {name: ArraySpec(shape, "float16") for name in names}
    arrays["labels"] = ArraySpec((), "int64")
    cache = RowCache(out, len(source), arrays, config, block_rows=options.block_rows)
    summary = {"out": str(out), "rows": len(source), "latent_shape": list(shape), "flip": options.flip}
    resolved = dict(config, vae=options.vae, latent_shape=list(shape), batch_size=batch_size,
                    world_size=dist.world, workers=options.workers, precision=options.precision)
    if encode_rows.already_complete(cache, dist, show, resolved):
        return dict(summary, computed=0)
    encode_rows.prepare(cache, dist)

    step = _encode_step(loaded.model.to(dist.device), options, dist.device)
    encoding = time.perf_counter()
    computed = encode_rows.fill(cache, source, dist, step, batch_size=batch_size, workers=options.workers,
                                label=f"cache-latents {options.vae}", show=show)
    merging = time.perf_counter()

    moments = LatentMoments(shape[0])
    encode_rows.finish(
        cache, dist, lambda: _cache_attrs(source, loaded, options, config, shape, moments),
        extra={"rows": np.array(source.row_ids(), dtype=object)} if dist.is_main else None,
        resolved=resolved,
        message=f"wrote {out}: {len(source)} rows x {'2 views x ' if options.flip else ''}"
                f"{' x '.join(map(str, shape))} (mean, std float16)",
        show=show, compression=options.compression, observe=observer(moments),
    )
    done = time.perf_counter()
    return dict(summary, computed=computed, seconds={"setup": encoding - started, "encode": merging - encoding,
                                                     "merge": done - merging})


#################################################################################
#                            Checking and inspecting                            #
#################################################################################


def check_cache_vae(path: Path, loaded, option: str = "latents") -> dict[str, Any]:
    """The cache's attributes, or a one-line UserError when it was written by another VAE.

    Compares the SHA-256 of the VAE's weights (`weights_sha256`) with the one the cache records.
    A REPA-E cache records no VAE: only its latent channel count can be checked.
    """
    with open_h5(Path(path), option) as f:
        layout = detect_layout(f)
        if layout == "repa-e":
            keys = repae_keys(f)
            channels = f[keys[0]].shape[0] // 2 if keys else None
            if channels is not None and channels != loaded.config.latent_channels:
                raise UserError(f"{option} {path}: REPA-E cache of {channels}-channel latents, the VAE given has "
                                f"{loaded.config.latent_channels} channels")
            return {"layout": "repa-e"}
        attrs = read_attrs(f, option)
    digest = weights_sha256(loaded.model)
    if attrs.get("vae_weights_sha256") != digest:
        from sendvae_cli.vae.autoencoder import config_name

        given = config_name(loaded.config) or loaded.config.describe()
        raise UserError(
            f"{option} {path}: written by another VAE ({attrs.get('vae')!r}, {attrs.get('vae_config')}, weights "
            f"sha256 {str(attrs.get('vae_weights_sha256'))[:12]}…) than the one given ({given}, weights sha256 "
            f"{digest[:12]}…); pass the VAE that wrote it, or cache again with `sendvae cache-latents`"
        )
    return attrs


def _channels(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    text = " ".join(f"{v:.4g}" for v in values[:8])
    return text + (f" … ({len(values)} channels)" if len(values) > 8 else "")


def describe_cache(path: Path) -> list[str]:
    """Human-readable lines for `sendvae cache-latents --info`."""
    path = Path(path).expanduser()
    if not path.exists():
        progress = parts_progress(path)
        if progress is None:
            raise UserError(f"--info {path}: no such file (and no unfinished run in {path.name}.parts)")
        cfg = progress["config"]
        return [
            f"{path}: not written yet (incomplete): {progress['rows_done']} of {progress['rows']} rows done, "
            f"{progress['blocks_done']} of {progress['blocks']} blocks, in {progress['parts']}"
            + (" (merging)" if progress["merging"] else ""),
            f"vae: {cfg.get('vae_config')} (weights sha256 {str(cfg.get('vae_weights_sha256'))[:16]}…)",
            f"resolution: {cfg.get('resolution')}   flip: {cfg.get('flip')}   compression: {cfg.get('compression')}",
            f"source: {json.dumps(cfg.get('source'), sort_keys=True)}",
            "if that run is no longer going on, rerun the same cache-latents command to finish it",
        ]
    with open_h5(path, "--info") as f:
        layout = detect_layout(f)
        if layout == "repa-e":
            keys = repae_keys(f)
            shape = f[keys[0]].shape if keys else None
            return [
                f"{path}: REPA-E latent cache (one HDF5 dataset per image)",
                f"entries: {len(keys)}   latent (mean+std stacked): {shape} {f[keys[0]].dtype if keys else ''}",
                "statistics: none stored (LatentDataset computes them on open, or pass a -latents-stats.pt file)",
            ]
        attrs = read_attrs(f, "--info", require_complete=False)
        rows = f["mean"].shape[0]
        labels = f["labels"][:]
        compression = f["mean"].compression
    lines = [
        f"{path}: sendvae latent cache, format {attrs.get('format_version')}, "
        f"{'complete' if attrs.get('complete') else 'INCOMPLETE'}",
        f"producer: {attrs.get('producer')} {attrs.get('producer_version')}",
        f"vae: {attrs.get('vae')} ({attrs.get('vae_config')}), weights {attrs.get('vae_weights')}",
        f"vae weights sha256: {attrs.get('vae_weights_sha256')}",
        f"rows: {rows}   views: {attrs.get('views')} ({'with' if attrs.get('flip') else 'no'} flip)   "
        f"latent: {' x '.join(map(str, attrs.get('latent_shape')))} float16 (mean, std)   "
        f"compression: {compression or 'none'}",
        f"resolution: {attrs.get('resolution')}   downsample: {attrs.get('downsample')}",
        f"labels: {len(np.unique(labels[labels >= 0]))} classes present"
        + (f" of {attrs['num_classes']}" if attrs.get("num_classes") is not None else "")
        + (f", {(labels < 0).sum()} unlabelled" if (labels < 0).any() else ""),
        f"source: {attrs.get('source')}",
        f"row order sha256: {attrs.get('row_order_sha256')}",
        f"latent_mean: {_channels(attrs.get('latent_mean', []))}",
        f"latent_std:  {_channels(attrs.get('latent_std', []))}",
        f"statistics: {attrs.get('stats_definition')}; {attrs.get('stats_count')} values per channel",
    ]
    return lines
