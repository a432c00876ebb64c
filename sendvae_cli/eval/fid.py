"""`sendvae fid`: FID, sFID, Inception Score, precision and recall of samples against a reference.

The pipeline streams images once through the extractor (by default the Inception network,
torch-fidelity's TF port; or a teacher, `extractors.py`; on the GPU when there is one) and keeps
only what the metrics need: float64 running moments of the features (2048 for Inception, the
teacher's width otherwise) and, for Inception, of the spatial (2023) features, per-split sums for
the Inception Score, and the float32 features for precision/recall (N x D; for the reference at
most `pr_reference_cap` rows, an evenly strided subset). Reference statistics come from the
reference file when it has them, else from the cache, else they are computed and cached.
Statistics of one extractor are never compared with another's. See docs/fid.md for the protocol.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sendvae_cli import distributed
from sendvae_cli.distributed import Dist
from sendvae_cli.errors import UserError
from sendvae_cli.eval.extractors import INCEPTION, metric_name, open_extractor
from sendvae_cli.eval.frechet import Moments, frechet_distance
from sendvae_cli.eval.inception import LOGITS_DIM
from sendvae_cli.eval.inputs import (
    PROTOCOL_VERSION,
    ImageInput,
    Reference,
    ReferenceStats,
    cache_dir,
    cache_key,
    open_image_input,
    open_reference,
    read_stats_file,
    save_stats,
    stats_extractor,
)
from sendvae_cli.eval.metric import Features
from sendvae_cli.eval.metrics import IS_SPLITS, PR_NEIGHBOURS, InceptionScore, minimum_counts, precision_recall
from sendvae_cli.progress import info, progress_bar, warn

ADM_SAMPLES = 50_000


@dataclass
class FidOptions:
    samples: Path | str
    ref: Path | str
    save_stats: Path | None = None
    inception_weights: Path | None = None
    extractor: str = INCEPTION  # or a registered teacher's name
    teacher_weights: Path | None = None
    random_weights: bool = False  # smoke runs: an untrained extractor (warned about)
    seed: int = 0
    batch_size: int | None = None
    device: str = "auto"
    num_samples: int | None = None
    json_out: Path | None = None
    workers: int | None = None
    cache: bool = True
    quiet: bool = False
    pr_reference_cap: int = 50_000


@dataclass
class Featurised:
    pool: Moments
    spatial: Moments | None
    features: np.ndarray
    inception_score: InceptionScore | None
    seconds: float


def default_json_path(samples: Path | str) -> Path:
    p = Path(samples).expanduser()
    base = p.with_suffix("") if p.suffix.lower() == ".npz" else p
    return base.parent / f"{base.name}.fid.json"


def strided_rows(count: int, cap: int) -> np.ndarray:
    """At most `cap` row indices spread evenly over `count` rows (all rows when count <= cap)."""
    if count <= cap:
        return np.arange(count)
    return (np.arange(cap, dtype=np.int64) * count) // cap


def featurise(images: ImageInput, extractor, *, batch_size: int, workers: int,
              limit: int | None = None, keep_rows: np.ndarray | None = None, inception_score: bool = False,
              description: str = "Inception features", show: bool = True, dist: Dist | None = None) -> Featurised | None:
    """One pass over the images: running moments, IS sums, and the features of `keep_rows` (default all).

    Under torchrun the processes take turns, batch k on rank k mod world (the batches one process
    would make), and rank 0 receives each round's features in rank order, i.e. in batch order: it
    updates the statistics exactly as one process does. Ranks other than 0 return None.
    """
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    count = limit or images.count
    keep = np.arange(count) if keep_rows is None else keep_rows
    main = rank == 0
    if main:
        features = np.empty((len(keep), extractor.dim), dtype=np.float32)
        pool_m = Moments(extractor.dim, extractor.device)
        spatial_m = Moments(extractor.spatial_dim, extractor.device) if extractor.spatial_dim else None
        score = InceptionScore(count, IS_SPLITS) if inception_score and extractor.has_logits else None
    # What travels between processes: each output the extractor gives (float32 on its device).
    widths = [extractor.dim, extractor.spatial_dim or 0, LOGITS_DIM if extractor.has_logits else 0]
    likes = [torch.empty((0, w), device=extractor.device) if w else None for w in widths]
    rounds = math.ceil(math.ceil(count / batch_size) / world)
    mine = images.batches(batch_size, limit=count, workers=workers, share=(rank, world))
    seen, kept = 0, 0
    start = time.perf_counter()
    with progress_bar(description, total=count, unit="img", show=show and main) as bar:
        for _ in range(rounds):
            batch = next(mine, None)  # this process's batch of the round (none in a short last round)
            outputs = extractor(batch) if batch is not None else (None, None, None)
            pieces = [distributed.gather_rows(dist, out, like) if like is not None else None
                      for out, like in zip(outputs, likes)] if world > 1 else [[o] for o in outputs]
            if not main:
                continue
            for k in range(len(pieces[0])):
                pool = pieces[0][k]
                spatial = pieces[1][k] if pieces[1] is not None else None
                logits = pieces[2][k] if pieces[2] is not None else None
                pool_m.update(pool)
                if spatial_m is not None:
                    spatial_m.update(spatial)
                if score is not None:
                    score.update(logits)
                # rows of this batch that are kept for precision/recall
                hi = np.searchsorted(keep, seen + len(pool))
                if hi > kept:
                    features[kept:hi] = pool[torch.as_tensor(keep[kept:hi] - seen, device=pool.device)].cpu().numpy()
                    kept = hi
                seen += len(pool)
                bar.advance(len(pool))
    if not main:
        return None
    if seen != count:
        raise UserError(f"{images.option} {images.path}: expected {count} images, read {seen}")
    return Featurised(pool_m, spatial_m, features, score, time.perf_counter() - start)


def _label(extractor) -> str:
    return "Inception" if extractor.name == INCEPTION else extractor.name


def _reference_from_images(ref: Reference, extractor, options: FidOptions, batch_size: int, workers: int,
                           dist: Dist | None = None) -> tuple[ReferenceStats | None, str]:
    """Statistics of the reference's images: from the cache, or computed (and cached).

    Under torchrun rank 0 alone hashes the images and reads or writes the cache (the key is the
    images' content and the extractor's weights, the same on every rank); the others learn only
    whether it held them, and help compute them when not. They return (None, provenance).
    """
    images = ref.images
    assert images is not None
    main = dist is None or dist.is_main
    cap = options.pr_reference_cap
    cached_path, stats = None, None

    def lookup() -> tuple[Path, ReferenceStats | None]:
        info(f"hashing {images.count} reference images for the statistics cache ...", show=not options.quiet)
        key = cache_key(images.content_sha256(workers=max(1, workers)), extractor.sha256, cap, extractor.name)
        path = cache_dir() / f"{key}.npz"
        if path.is_file():
            try:
                found, _ = read_stats_file(path, "cache")
            except UserError as error:
                warn(f"ignoring a damaged cache entry: {error}")
                return path, None
            if found.meta.get("weights_sha256") == extractor.sha256 and stats_extractor(found) == extractor.name:
                return path, found
        return path, None

    if options.cache:
        if dist is None:
            cached_path, stats = lookup()
            hit = stats is not None
        else:
            cached_path, stats = distributed.main_first(dist, lookup) or (None, None)
            hit = distributed.share(dist, stats is not None)
        if hit:
            return stats, "cache"
    done = featurise(images, extractor, batch_size=batch_size, workers=workers,
                     keep_rows=strided_rows(images.count, cap), description=f"{_label(extractor)} features: reference",
                     show=not options.quiet, dist=dist)
    if not main:
        return None, "computed"
    stats = ReferenceStats(done.pool.gaussian(), done.spatial.gaussian() if done.spatial else None, done.features,
                           {"extractor": extractor.name, "weights_sha256": extractor.sha256,
                            "source": images.describe(), "pr_features": len(done.features)})
    if cached_path is not None:
        try:
            save_stats(cached_path, stats, stats.meta)
        except OSError as error:
            warn(f"could not write the statistics cache {cached_path}: {error}")
    return stats, "computed"


def resolve_reference(ref: Reference, extractor, options: FidOptions, batch_size: int,
                      workers: int, dist: Dist | None = None) -> tuple[ReferenceStats | None, dict[str, Any]]:
    """The statistics and features the metrics use, and where each came from (None on ranks > 0,
    which only help compute what the reference file lacks)."""
    provenance: dict[str, Any] = {}
    file_stats = ref.stats
    if file_stats is not None and ref.kind == "stats":
        made_by = stats_extractor(file_stats)
        if made_by != extractor.name:
            raise UserError(f"--ref {ref.path}: statistics of extractor {made_by}, this run uses {extractor.name}; "
                            f"pass --extractor {made_by}, or the reference images to compute {extractor.name}'s")
        made_with = file_stats.meta.get("weights_sha256")
        if made_with and made_with != extractor.sha256:
            raise UserError(f"--ref {ref.path}: statistics were computed with {_label(extractor)} weights sha256 "
                            f"{made_with[:12]}..., this run uses {extractor.sha256[:12]}...; recompute them with these weights")
    if file_stats is not None and ref.kind == "adm-reference" and not extractor.is_release:
        warn(f"--ref {ref.path}: ADM reference statistics come from the release Inception weights, this run uses other "
             f"weights (sha256 {extractor.sha256[:12]}...): FID against them means nothing")
    need_images = file_stats is None or file_stats.spatial is None or file_stats.features is None
    from_images: ReferenceStats | None = None
    if need_images and ref.images is not None:
        from_images, provenance["images"] = _reference_from_images(ref, extractor, options, batch_size, workers, dist)
    if dist is not None and not dist.is_main:
        return None, provenance
    if file_stats is not None:
        pool, spatial, features = file_stats.pool, file_stats.spatial, file_stats.features
        provenance["fid"] = "file"
        provenance["sfid"] = "file" if spatial is not None else None
        provenance["precision_recall"] = "file" if features is not None else None
    else:
        pool = spatial = features = None
    if from_images is not None:
        if pool is None:
            pool, provenance["fid"] = from_images.pool, "images"
        if spatial is None:
            spatial, provenance["sfid"] = from_images.spatial, "images"
        if features is None:
            features, provenance["precision_recall"] = from_images.features, "images"
    assert pool is not None
    meta = {"extractor": extractor.name, "weights_sha256": extractor.sha256, "source": ref.describe()}
    return ReferenceStats(pool, spatial, features, meta), provenance


def _teacher_reference(ref: Reference, extractor) -> Reference:
    """An ADM reference batch holds Inception statistics: another extractor uses its images only."""
    if extractor.name == INCEPTION or ref.kind != "adm-reference":
        return ref
    if ref.images is None:
        raise UserError(f"--ref {ref.path}: holds Inception statistics (mu, sigma) and no images (arr_0); "
                        f"--extractor {extractor.name} needs the reference images")
    return Reference(ref.path, "npz-images", images=ref.images)


def _check_counts(samples: ImageInput, count: int, ref: Reference, inception_score: bool = True) -> None:
    need = minimum_counts()
    if inception_score and count < need["inception_score"]:
        raise UserError(f"SAMPLES {samples.path}: {count} image(s); the Inception Score ({IS_SPLITS} splits) needs at "
                        f"least {need['inception_score']}")
    if ref.stats is None or ref.stats.features is None:
        ref_images = ref.images.count if ref.images is not None else None
        if ref.stats is None and ref_images is not None and ref_images < need["fid"]:
            raise UserError(f"--ref {ref.path}: {ref_images} image(s); FID needs at least {need['fid']}")
        if ref_images is not None and ref_images < need["precision_recall"]:
            raise UserError(f"--ref {ref.path}: {ref_images} image(s); precision/recall (k={PR_NEIGHBOURS} neighbours) "
                            f"need at least {need['precision_recall']}")
    elif len(ref.stats.features) < need["precision_recall"]:
        raise UserError(f"--ref {ref.path}: features of {len(ref.stats.features)} image(s); precision/recall "
                        f"(k={PR_NEIGHBOURS} neighbours) need at least {need['precision_recall']}")


def registered_metrics(registry, features: Features) -> tuple[dict[str, Any], list[list[str]], dict[str, Any]]:
    """Every registered metric on these features: (figures by JSON key, table rows, protocols)."""
    if registry is None:
        from sendvae_cli.registry import get_registry

        registry = get_registry()
    figures: dict[str, Any] = {}
    rows: list[list[str]] = []
    protocols: dict[str, Any] = {}
    for name in registry.names("metric"):
        metric = registry.metric(name).build()
        found = metric.compute(features)
        figures.update(found)
        rows += [[row.label, row.value, row.definition] for row in metric.rows(found)]
        protocols[metric.name] = metric.protocol()
    return figures, rows, protocols


def _pick_device(requested: str) -> torch.device:
    from sendvae_cli.distributed import pick_device

    try:
        return pick_device(requested)
    except RuntimeError as error:
        raise UserError(f"--device {requested}: {error}") from None


def _check_options(options: FidOptions) -> int:
    """One-line errors for impossible numbers; the DataLoader workers to use."""
    if options.batch_size is not None and options.batch_size <= 0:
        raise UserError(f"--batch-size {options.batch_size}: expected a positive number")
    if options.num_samples is not None and options.num_samples <= 0:
        raise UserError(f"--num-samples {options.num_samples}: expected a positive number")
    workers = options.workers if options.workers is not None else min(8, os.cpu_count() or 1)
    if workers < 0:
        raise UserError(f"--workers {workers}: expected 0 or more")
    return workers


def _open_inputs(options: FidOptions, workers: int):
    """(samples, how many of them are used, reference): every input error before any model is built."""
    samples = open_image_input(options.samples, "SAMPLES", max(1, workers))
    count = samples.count
    if options.num_samples is not None:
        if options.num_samples > samples.count:
            raise UserError(f"--num-samples {options.num_samples}: SAMPLES {options.samples} holds only {samples.count} images")
        count = options.num_samples
    ref = open_reference(options.ref, max(1, workers))
    _check_counts(samples, count, ref, inception_score=options.extractor == INCEPTION)
    return samples, count, ref


def _open_extractor(options: FidOptions, registry, dist):
    """The extractor, opened on rank 0 first: weights a process downloads are there for the others."""

    def extractor_for(device: torch.device):
        return open_extractor(options.extractor, registry=registry, device=device,
                              inception_weights=options.inception_weights, teacher_weights=options.teacher_weights,
                              random_weights=options.random_weights, seed=options.seed)

    opened = distributed.main_first(dist, lambda: extractor_for(dist.device))
    return opened if dist.is_main else extractor_for(dist.device)


def _warn_weights(options: FidOptions, extractor) -> None:
    if options.random_weights:
        warn(f"extractor {extractor.name} has random weights (--random-weights): a smoke test; its figures mean nothing")
    elif not extractor.is_release and extractor.name == INCEPTION:
        warn(f"Inception weights {extractor.path or ''} (sha256 {extractor.sha256[:12]}...) are not torch-fidelity's "
             f"release file: figures are not comparable with published numbers")


def _own_figures(done, reference, inception: bool, device: torch.device) -> dict[str, Any]:
    """FID (or FD), sFID, the Inception Score and precision/recall: the figures `fid` computes itself."""
    fid = frechet_distance(done.pool.gaussian(), reference.pool)
    sfid = None
    if done.spatial is not None and reference.spatial is not None:
        sfid = frechet_distance(done.spatial.gaussian(), reference.spatial)
    is_mean = is_std = None
    if done.inception_score is not None:
        is_mean, is_std = done.inception_score.result()
    precision = recall = None
    if reference.features is not None:
        precision, recall = precision_recall(reference.features, done.features, PR_NEIGHBOURS, device=device)
    return {"fid" if inception else "fd": fid, "sfid": sfid, "inception_score": is_mean,
            "inception_score_std": is_std, "precision": precision, "recall": recall}


def _protocol(extractor, batch_size: int, metric_protocols: dict[str, Any]) -> dict[str, Any]:
    inception = extractor.name == INCEPTION
    return {
        "suite": "ADM (openai/guided-diffusion evaluations/evaluator.py)" if inception else
                 f"Fréchet distance and precision/recall in {extractor.name}'s feature space (as dgm-eval, "
                 f"Stein et al. 2023); sFID and the Inception Score exist only with Inception",
        "version": PROTOCOL_VERSION,
        "extractor": extractor.describe(),
        "fid": "float64; tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)); unbiased covariance (n - 1)",
        "inception_score": {"splits": IS_SPLITS, "order": "consecutive, as given"} if inception else None,
        "precision_recall": {"k": PR_NEIGHBOURS, "distance": "squared Euclidean, float32"},
        "metrics": metric_protocols,
        "batch_size": batch_size,
        "standard_sample_count": ADM_SAMPLES,
    }


def evaluate(options: FidOptions, extractor=None, registry=None) -> dict[str, Any] | None:
    """Every figure and the protocol, as written to the JSON file (which is written here too).

    Under torchrun every process featurises its share of the images (`featurise`) and rank 0
    computes and writes the figures; the other ranks return None.
    """
    started = time.perf_counter()
    workers = _check_options(options)
    samples, count, ref = _open_inputs(options, workers)
    json_path = Path(options.json_out).expanduser() if options.json_out else default_json_path(options.samples)

    _pick_device(options.device)  # a wrong --device is one line before any process group starts
    dist = distributed.init(options.device if extractor is None else str(extractor.device))
    if extractor is None:
        extractor = _open_extractor(options, registry, dist)
    _warn_weights(options, extractor)
    ref = _teacher_reference(ref, extractor)
    device = extractor.device
    batch_size = options.batch_size or (250 if device.type == "cuda" else 32)

    reference, provenance = resolve_reference(ref, extractor, options, batch_size, workers, dist)
    done = featurise(samples, extractor, batch_size=batch_size, workers=workers, limit=count, inception_score=True,
                     description=f"{_label(extractor)} features: samples", show=not options.quiet, dist=dist)
    if not dist.is_main:
        return None
    inception = extractor.name == INCEPTION
    metrics = _own_figures(done, reference, inception, device)
    fid = metrics["fid" if inception else "fd"]
    if options.save_stats is not None:
        save_stats(options.save_stats, reference, {**reference.meta, "from": provenance})
    more, metric_rows, metric_protocols = registered_metrics(
        registry, Features(done.features, reference.features, extractor.name, device))
    metrics.update(more)
    result = {
        "extractor": extractor.name,
        "fd_name": metric_name(extractor.name),
        "metrics": metrics,
        "metric_rows": metric_rows,
        "samples": {**samples.describe(), "used": count},
        "reference": {**ref.describe(), "statistics_count": reference.pool.count,
                      "precision_recall_features": None if reference.features is None else len(reference.features),
                      "from": provenance,
                      "saved_to": str(options.save_stats) if options.save_stats else None},
        "protocol": _protocol(extractor, batch_size, metric_protocols),
        "sendvae_version": _version(),
        "seconds": round(time.perf_counter() - started, 3),
        "samples_per_second": round(count / done.seconds, 2) if done.seconds > 0 else None,
        "json": str(json_path),
    }
    if not inception:
        result["not_applicable"] = {"sfid": "Inception only (mixed_6/conv features)",
                                    "inception_score": "Inception only (ImageNet class logits)"}
    if not np.isfinite(fid):  # cannot happen with the eigh square root; guard the file anyway
        raise UserError(f"FID is not finite ({fid}); check the reference statistics")
    _write_json(json_path, result)
    return result


def _version() -> str:
    from sendvae_cli import __version__

    return __version__


def _write_json(path: Path, result: dict[str, Any]) -> None:
    from sendvae_cli.io import write_result_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_result_json(path, result)


def fid_table(result: dict[str, Any]):
    """A rich table of the figures, with counts and provenance in its caption."""
    from rich.table import Table

    m = result["metrics"]
    name = result.get("extractor", INCEPTION)
    inception = name == INCEPTION
    title = "sendvae fid (ADM suite)" if inception else f"sendvae fid: Fréchet distance in {name}'s feature space"
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("definition", style="dim")

    def show(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}"

    weights = result["protocol"]["extractor"]
    if inception:
        table.add_row("FID", show(m["fid"]), "pool_3 (2048), Fréchet distance")
        table.add_row("sFID", show(m["sfid"]), "mixed_6/conv first 7 channels (2023)")
        table.add_row("Inception Score", f"{show(m['inception_score'], 2)} ± {show(m['inception_score_std'], 2)}",
                      f"{IS_SPLITS} splits")
    else:
        table.add_row(result.get("fd_name", f"FD_{name}"), show(m["fd"]),
                      f"{name}: {weights['fd_features']}, Fréchet distance")
        table.add_row("sFID", "n/a", "Inception only")
        table.add_row("Inception Score", "n/a", "Inception only")
    table.add_row("Precision", show(m["precision"]), f"k = {PR_NEIGHBOURS}")
    table.add_row("Recall", show(m["recall"]), f"k = {PR_NEIGHBOURS}")
    for label, value, definition in result.get("metric_rows", []):  # registered metrics (KID, plugins)
        table.add_row(label, value, definition)
    s, r = result["samples"], result["reference"]
    caption = (f"samples: {s['used']} of {s['images']} ({s['kind']}, {s['image_size'][0]}x{s['image_size'][1]}) | "
               f"reference: {r['kind']}, statistics of {r['statistics_count'] or '?'} images, P/R features "
               f"{r['precision_recall_features'] or '-'} | {name} weights sha256 {weights['weights_sha256'][:12]}"
               f"{'' if weights['release_weights'] else ' (NOT the release file)'} | {result['json']}")
    if s["used"] != ADM_SAMPLES:
        caption += f" | papers use {ADM_SAMPLES:,} samples"
    table.caption = caption
    return table
