"""`sendvae probe`: attribute linear probes on VAE latents (and teacher features), side by side.

For every feature source asked for (`--vae`, `--features`):

1. build it and work out its cache file (`probe_features`): the digest of its weights, the
   resolution and the images decides the name, so a cache is found again under any label;
2. encode the images into the cache unless it is complete (resumable, torchrun-aware);
3. rank 0 fits the probe (`linear_probe.fit_probe`, protocol in docs/probe.md) unless
   `OUT/results/` already holds a result for that cache and these probe settings.

Then rank 0 writes `OUT/probe.json` (protocol, settings, every figure, per-attribute F1),
`OUT/probe.png` (a bar chart) and prints a table. Results are written one source at a time, so
an interrupted comparison of several VAEs continues where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sendvae_cli.caches.h5rows import fingerprint
from sendvae_cli.errors import UserError
from sendvae_cli.io import write_result_json
from sendvae_cli.eval.requests import FeatureRequest, check_labels, data_name, saved_result, slug

PROTOCOL = {
    "features": "vae: posterior mean at the probe resolution after ADM centre crop, flattened C*H*W; "
                "teacher: patch tokens averaged over positions; stored as float16",
    "standardisation": "per feature, mean and std of the training split (float64); std < 1e-6 counts as 1",
    "model": "one linear layer, BCE with logits (mean over rows and attributes)",
    "optimiser": "AdamW; seeded initialisation and batch order",
    "early_stopping": "lowest validation BCE; stop after `patience` epochs without improvement; keep the best epoch",
    "decision": "sigmoid > 0.5 (logit > 0)",
    "metrics": "test split: macro-F1 (headline; an attribute without true or predicted positives scores 0, as "
               "scikit-learn's zero_division=0), micro-F1, per-attribute F1, top-5 recall "
               "(sum over images of |true & top-5| / sum of |true|)",
}


@dataclass
class ProbeOptions:
    data: str
    requests: list[FeatureRequest]
    out: Path
    root: Path | None = None
    resolution: int | None = None  # None: the exported VAEs' training resolution (256 when unknown)
    num_images: int | None = None
    seed: int = 0
    random_weights: bool = False
    teacher_weights: Path | None = None  # local weights of the one teacher asked for
    strict: bool = False
    cache_dir: Path | None = None  # None: OUT/features
    batch_size: int | None = None  # None: 64 on GPU, 16 on CPU
    workers: int = 4
    device: str = "auto"
    block_rows: int = 1024
    settings: Any = None  # linear_probe.ProbeSettings
    quiet: bool = False


def _open_source(options: ProbeOptions, registry, resolution: int):
    from sendvae_cli.data.open import open_images
    from sendvae_cli.eval.probe_features import check_attribute_source

    source = open_images(options.data, registry=registry, resolution=resolution, num_images=options.num_images,
                         seed=options.seed, strict=options.strict,
                         root=str(options.root) if options.root else None)
    check_attribute_source(source, options.data, options.num_images)
    return source


def encode_all(options: ProbeOptions, registry, dist, show: bool) -> list[dict[str, Any]]:
    """Every requested source's feature cache, encoded where missing; [{request, featurizer, path, ...}]."""
    import gc

    from sendvae_cli.eval.probe_features import cache_config, cache_path, encode_features, open_featurizer
    from sendvae_cli.eval.requests import common_resolution, source_identity
    from sendvae_cli.progress import info

    cache_dir = Path(options.cache_dir or Path(options.out) / "features")
    batch_size = options.batch_size or (64 if dist.device.type == "cuda" else 16)
    resolution = common_resolution(options.requests, options.resolution)
    source = _open_source(options, registry, resolution)  # before any model: data errors come first
    identity = source_identity(source)
    entries = []
    for request in options.requests:
        featurizer = open_featurizer(request, registry, resolution=resolution, seed=options.seed,
                                     random_weights=options.random_weights, teacher_weights=options.teacher_weights)
        config = cache_config(featurizer, identity)
        path = cache_path(cache_dir, config, featurizer, data_name(options.data))
        started = time.perf_counter()
        if dist.is_main:
            cache_dir.mkdir(parents=True, exist_ok=True)
        computed = encode_features(source, featurizer, path, config, dist, batch_size=batch_size, workers=options.workers,
                                   block_rows=options.block_rows, show=show)
        seconds = time.perf_counter() - started
        info(f"{request.label}: {'encoded ' + str(computed) + ' images into' if computed else 'reusing'} {path}"
             + (f" ({seconds:.1f} s)" if computed else ""), show)
        entries.append({"request": request, "described": featurizer.describe(), "path": path,
                        "rows": len(source), "encoded": computed, "encode_seconds": round(seconds, 3)})
        del featurizer
        gc.collect()
    return entries


def probe_cache(entry: dict[str, Any], settings, results_dir: Path, show: bool) -> dict[str, Any]:
    """Fit (or reuse) the probe of one feature cache; the result is saved before it is returned."""
    from sendvae_cli.eval.linear_probe import fit_probe
    from sendvae_cli.eval.probe_features import open_feature_cache
    from sendvae_cli.progress import progress_bar

    request: FeatureRequest = entry["request"]
    key = fingerprint({"cache": entry["path"].name, "settings": settings.to_dict()})
    saved = results_dir / f"{slug(request.label)}.json"
    record = saved_result(saved, key)
    if record is not None:
        return record
    cache = open_feature_cache(entry["path"])
    try:
        with progress_bar(f"probe {request.label}", total=settings.epochs, unit="epoch", show=show) as bar:
            def progress(event: str, **fields) -> None:
                if event == "epoch_end":
                    bar.advance(1)
                    bar.describe(f"probe {request.label} (val loss {fields['val_loss']:.4f}, "
                                 f"best epoch {fields['best_epoch']})")

            try:
                result = fit_probe(cache.features, cache.attributes, cache.split, settings, progress=progress)
                bar.stop_early()
            except ValueError as error:
                raise UserError(f"{request.option} {request.ref}: cannot probe {entry['path']}: {error}") from None
        names = cache.attribute_names
    finally:
        cache.close()
    record = {
        "key": key,
        "label": request.label,
        "kind": request.kind,
        "ref": request.ref,
        "features": entry["described"],
        "cache": str(entry["path"]),
        "settings": settings.to_dict(),
        **result.to_dict(),
        "per_attribute_f1": dict(zip(names, result.metrics["per_attribute_f1"])),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    write_result_json(saved, record, default=float)
    return record


def run_probe(options: ProbeOptions, registry) -> dict[str, Any] | None:
    """Encode, probe, compare; returns the summary written to OUT/probe.json (None on ranks > 0)."""
    from sendvae_cli import __version__, distributed
    from sendvae_cli.eval.linear_probe import ProbeSettings

    if not options.requests:
        raise UserError("--vae / --features: nothing to probe; pass --vae REF (repeat it to compare VAEs)")
    check_labels(options.requests)
    teachers = [r for r in options.requests if r.kind == "teacher"]
    if options.teacher_weights is not None and len(teachers) != 1:
        raise UserError(f"--teacher-weights {options.teacher_weights}: goes with exactly one --features teacher:NAME "
                        f"(got {len(teachers)})")
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    settings = options.settings or ProbeSettings()
    dist = distributed.init(options.device)
    show = dist.is_main and not options.quiet
    entries = encode_all(options, registry, dist, show)
    if not dist.is_main:
        return None
    settings.device = str(dist.device)  # the probe trains where the features were encoded
    results = [probe_cache(entry, settings, out / "results", show) for entry in entries]
    summary = {
        "producer": f"sendvae {__version__} probe",
        "data": options.data,
        "root": str(options.root) if options.root else None,
        "num_images": options.num_images,
        "resolution": entries[0]["described"]["resolution"],
        "seed": options.seed,
        "protocol": PROTOCOL,
        "settings": settings.to_dict(),
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_result_json(out / "probe.json", summary, default=float)
    chart(summary, out / "probe.png")
    return summary


#################################################################################
#                                 Presenting                                    #
#################################################################################


def _has_top5(summary: dict[str, Any]) -> bool:
    return "deepfashion" in str(summary["data"]).lower()


def chart(summary: dict[str, Any], path: Path) -> Path:
    from sendvae_cli.eval.bar_chart import grouped_bars

    results = summary["results"]
    series = {"macro-F1": [r["metrics"]["macro_f1"] for r in results],
              "micro-F1": [r["metrics"]["micro_f1"] for r in results]}
    if _has_top5(summary):
        series["top-5 recall"] = [r["metrics"]["top5_recall"] for r in results]
    test_rows = results[0]["rows"]["test"] if results else 0
    title = (f"attribute probe: {data_name(str(summary['data']))} at {summary['resolution']} px "
             f"(test split, {test_rows} images)")
    return grouped_bars(path, title, [r["label"] for r in results], series, y_label="score")


def probe_table(summary: dict[str, Any]):
    from rich.table import Table

    rows = summary["results"][0]["rows"] if summary["results"] else {"train": 0, "val": 0, "test": 0}
    table = Table(title=f"Attribute probe: {data_name(str(summary['data']))} at {summary['resolution']} px, "
                        f"{rows['train']}/{rows['val']}/{rows['test']} train/val/test images; F1 on test",
                  title_justify="left")
    columns = ["features", "dim", "macro-F1", "micro-F1"]
    if _has_top5(summary):
        columns.append("top-5 recall")
    columns += ["val macro-F1", "best epoch"]
    for column in columns:
        table.add_column(column, justify="left" if column == "features" else "right")
    best = max((r["metrics"]["macro_f1"] for r in summary["results"]), default=None)
    for r in summary["results"]:
        m = r["metrics"]
        macro = f"{m['macro_f1']:.4f}"
        row = [r["label"], str(r["features"]["dim"]), f"[bold]{macro}[/bold]" if m["macro_f1"] == best else macro,
               f"{m['micro_f1']:.4f}"]
        if _has_top5(summary):
            row.append(f"{m['top5_recall']:.4f}")
        row += [f"{r['val_metrics']['macro_f1']:.4f}", f"{r['best_epoch']}/{r['epochs_run']}"]
        table.add_row(*row)
    return table


def hit_epoch_cap(record: dict[str, Any]) -> bool:
    """True when a probe stopped at `epochs` while the validation loss was still improving."""
    settings = record["settings"]
    return record["epochs_run"] >= settings["epochs"] and record["epochs_run"] - record["best_epoch"] < settings["patience"]


def epoch_cap_warnings(summary: dict[str, Any]) -> list[str]:
    """One line per probe that ran out of epochs instead of stopping early."""
    return [f"{r['label']}: the probe stopped at the epoch cap ({r['epochs_run']} epoch"
            f"{'s' if r['epochs_run'] != 1 else ''}, best epoch "
            f"{r['best_epoch']}) while the validation loss was still falling; its F1 may be low: "
            f"rerun with a larger --epochs (or a larger --lr)" for r in summary["results"] if hit_epoch_cap(r)]


def render_attribute_f1(summary: dict[str, Any], shown: int = 5):
    """Per-attribute test F1: the `shown` best and worst attributes of each probe, side by side."""
    from rich.table import Table

    table = Table(title=f"Per-attribute F1 on test (best and worst {shown}; all in probe.json)", title_justify="left")
    table.add_column("features")
    table.add_column("best", overflow="fold")
    table.add_column("worst", overflow="fold")
    for r in summary["results"]:
        ranked = sorted(r["per_attribute_f1"].items(), key=lambda kv: (-kv[1], kv[0]))
        top = ranked[:shown]
        bottom = [kv for kv in ranked[-shown:][::-1] if kv not in top]
        table.add_row(r["label"], ", ".join(f"{k} {v:.2f}" for k, v in top),
                      ", ".join(f"{k} {v:.2f}" for k, v in bottom) or "-")
    return table
