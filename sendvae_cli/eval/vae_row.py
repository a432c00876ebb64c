"""The evaluation row of a VAE: what `train-vae --eval-every` logs while it trains and
`sendvae eval-vae` prints for a finished one, so a released VAE can be set beside a run's curve.

On held-out images fixed once (`HeldOut`: an attribute dataset drawn with `EVAL_SEED`, the same
for every run, so that rows of different runs and VAEs compare):

- probe: the posterior means, flattened and stored as float16 as `sendvae probe` caches them,
  go through the probe of `sendvae probe` with its settings (`linear_probe.fit_probe`:
  standardised, one linear layer, at most 200 epochs, early stopping on the val split after 10
  without improvement, threshold 0.5). macro-F1 and micro-F1 on the test split. The budget is the
  number of held-out images, not the probe: on a CPU the extractor's forward of each image costs
  far more than the probe's training (benchmarks/eval_overhead.py).
- reconstruction, as `sendvae recon` measures it: decode(posterior mean), rounded to whole
  levels; PSNR (`recon.psnr_summary`: the mean over inexact images) and SSIM; rFD, the Fréchet
  distance between the extractor's features of the reconstructions and of the originals (the
  originals' Gaussian is computed once, when the held-out set is opened).

Under torchrun each rank encodes a contiguous share of the rows (`metrics.split_bounds`); the
shares are gathered in rank order and rank 0 fits the probe and reduces the figures.
Nothing here draws from the global random generator: the probe has its own seeded generator
and the VAE runs on posterior means, so an evaluation leaves training's random numbers as they were.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sendvae_cli.errors import UserError

EVAL_SEED = 1000  # generated datasets (shapes) draw the held-out rows with this seed, which no training run uses
PREFIX = "eval/"  # metrics.jsonl and tracker keys of an evaluation row
METRICS = ("probe_macro_f1", "probe_micro_f1", "psnr", "ssim", "rfd")
BEST = {"probe": ("probe_macro_f1", max), "rfd": ("rfd", min)}  # --keep-best: which figure, and which way is better
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class EvalOptions:
    data: str
    root: str | None = None
    images: int | None = None  # None: 1000 (a named dataset's first rows, split proportions kept)
    extractor: str = "inception"
    probe_epochs: int = 200  # sendvae probe's --epochs and --patience
    probe_patience: int = 10
    batch_size: int = 32
    teacher_weights: str | None = None  # local weights of a teacher extractor
    inception_weights: str | None = None  # local Inception weights (extractor inception)
    random_weights: bool = False  # the extractor untrained (smoke runs)
    seed: int = 0  # seeds the random extractor weights and the probe

    def describe(self) -> dict[str, Any]:
        return {"data": self.data, "root": self.root, "images": self.images, "seed": EVAL_SEED,
                "extractor": self.extractor, "probe_epochs": self.probe_epochs, "probe_patience": self.probe_patience}


DEFAULT_IMAGES = 1000


def _as_option(error: UserError, option: str) -> UserError:
    """The data opener's errors name DATA; here the images come from an option."""
    text = str(error)
    return UserError(option + text[len("DATA"):] if text.startswith("DATA") else f"{option}: {text}")


def open_held_out_images(options: EvalOptions, registry, resolution: int, option: str = "--eval-data"):
    """The held-out image source; errors name `option`."""
    from sendvae_cli.data.open import open_images
    from sendvae_cli.eval.probe_features import check_attribute_source

    images = options.images or DEFAULT_IMAGES
    try:
        source = open_images(options.data, registry=registry, resolution=resolution, num_images=images,
                             seed=EVAL_SEED, root=options.root)
        check_attribute_source(source, options.data, images)
    except UserError as error:
        raise _as_option(error, option) from None
    return source


class HeldOut:
    """The held-out images, their attributes and splits, the extractor, and the originals' Gaussian."""

    def __init__(self, options: EvalOptions, registry, resolution: int, dist, option: str = "--eval-data"):
        from sendvae_cli.eval.extractors import open_extractor

        self.options, self.dist, self.resolution = options, dist, resolution
        self.source = open_held_out_images(options, registry, resolution, option)
        self.attributes = self.source.attribute_matrix()
        self.splits = self.source.split_codes()
        self.lo, self.hi = _share(len(self.source), dist)
        self.extractor = open_extractor(options.extractor, registry=registry, device=dist.device,
                                        teacher_weights=options.teacher_weights,
                                        inception_weights=options.inception_weights,
                                        random_weights=options.random_weights, seed=options.seed)
        originals = [self.extractor(images)[0] for images, _ in self.batches()]
        self.reference = _gaussian(_gathered(dist, originals, self.extractor.dim, torch.float32))

    def batches(self):
        """This rank's rows as uint8 image batches, in row order."""
        size = self.options.batch_size
        for lo in range(self.lo, self.hi, size):
            rows = range(lo, min(lo + size, self.hi))
            yield torch.stack([self.source[i][0] for i in rows]).to(self.dist.device), rows

    def describe(self) -> dict[str, Any]:
        return {**self.options.describe(), "rows": len(self.source), "resolution": self.resolution,
                "extractor_sha256": self.extractor.sha256,
                "split_rows": [int(n) for n in np.bincount(self.splits, minlength=3)]}


def _share(count: int, dist) -> tuple[int, int]:
    from sendvae_cli.eval.metrics import split_bounds

    return split_bounds(count, dist.world)[dist.rank]


def _gathered(dist, pieces: list[torch.Tensor], dim: int | None, dtype) -> torch.Tensor:
    """This rank's pieces, concatenated, gathered from every rank in rank order (one row per image)."""
    from sendvae_cli.distributed import gather_rows

    shape = (0,) if dim is None else (0, dim)
    mine = torch.cat(pieces).to(dist.device, dtype) if pieces else torch.zeros(shape, dtype=dtype, device=dist.device)
    like = torch.zeros(shape, dtype=dtype, device=dist.device)
    return torch.cat([p.cpu() for p in gather_rows(dist, mine, like)]).to(dtype)


def _gaussian(features: torch.Tensor):
    from sendvae_cli.eval.frechet import Moments

    moments = Moments(features.shape[1])
    moments.update(features)
    return moments.gaussian()


def evaluate(vae: torch.nn.Module, held: HeldOut) -> dict[str, Any] | None:
    """The row (keys `PREFIX + METRICS`, the probe's best epoch, and the wall-clock `eval/seconds` and
    `eval/probe_seconds`) on rank 0; None on the others.

    `vae` is an AutoencoderKL (encode -> posterior with `.mean`, decode); it is put in eval mode
    for the evaluation and given back in the mode it had.
    """
    from sendvae_cli.eval.image_quality import psnr, ssim
    from sendvae_cli.images import to_levels, to_model_range

    started = time.perf_counter()
    was_training = vae.training
    vae.eval()
    latents, psnrs, ssims, features = [], [], [], []
    try:
        with torch.no_grad():
            for images, _ in held.batches():
                x = to_model_range(images)
                z = vae.encode(x).mean.float()
                r, o = to_levels(vae.decode(z).float()), to_levels(x)
                latents.append(z.flatten(1))
                psnrs.append(psnr(r, o))
                ssims.append(ssim(r, o))
                features.append(held.extractor(r.to(torch.uint8))[0])
    finally:
        vae.train(was_training)
    dist = held.dist
    dim = int(np.prod(vae.config.latent_shape(held.resolution)))
    latents_all = _gathered(dist, latents, dim, torch.float32)
    psnr_all = _gathered(dist, psnrs, None, torch.float64)
    ssim_all = _gathered(dist, ssims, None, torch.float64)
    features_all = _gathered(dist, features, held.extractor.dim, torch.float32)
    if not dist.is_main:
        return None
    from sendvae_cli.eval.frechet import frechet_distance
    from sendvae_cli.eval.recon import psnr_summary

    row = {**_probe(latents_all, held), "psnr": psnr_summary(psnr_all.numpy())["psnr"],
           "ssim": float(ssim_all.mean()), "rfd": frechet_distance(_gaussian(features_all), held.reference)}
    out = {PREFIX + key: row[key] for key in METRICS}
    out[PREFIX + "probe_best_epoch"] = row["best_epoch"]
    out[PREFIX + "probe_seconds"] = row["probe_seconds"]  # of `seconds`, the probe's training
    out[PREFIX + "seconds"] = time.perf_counter() - started
    return out


def _probe(latents: torch.Tensor, held: HeldOut) -> dict[str, Any]:
    """macro- and micro-F1 of the probe on a budget; None where float16 cannot hold the latents."""
    from sendvae_cli.eval.linear_probe import ProbeSettings, fit_probe

    if not torch.isfinite(latents).all() or latents.abs().max() > FLOAT16_MAX:
        return {"probe_macro_f1": None, "probe_micro_f1": None, "best_epoch": None, "probe_seconds": 0.0}
    options = held.options
    settings = ProbeSettings(epochs=options.probe_epochs, patience=options.probe_patience, seed=options.seed,
                             device=str(held.dist.device))
    started = time.perf_counter()
    result = fit_probe(latents.to(torch.float16).numpy(), held.attributes, held.splits, settings)
    return {"probe_macro_f1": float(result.metrics["macro_f1"]), "probe_micro_f1": float(result.metrics["micro_f1"]),
            "best_epoch": result.best_epoch, "probe_seconds": time.perf_counter() - started}


def is_row(row: dict[str, Any]) -> bool:
    """A metrics.jsonl row that an evaluation wrote."""
    return PREFIX + METRICS[0] in row


def best_so_far(rows: list[dict[str, Any]], keep_best: str) -> float | None:
    """The best value of --keep-best's figure among evaluation rows already logged."""
    key, better = BEST[keep_best]
    values = [r[PREFIX + key] for r in rows if is_row(r) and r.get(PREFIX + key) is not None]
    return better(values) if values else None


def improves(value: float | None, best: float | None, keep_best: str) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value > best if BEST[keep_best][1] is max else value < best


#################################################################################
#                        `sendvae eval-vae`: finished VAEs                      #
#################################################################################


def run_eval_vae(requests, options: EvalOptions, registry, *, resolution: int | None, device: str,
                 json_out=None, quiet: bool = False) -> dict[str, Any] | None:
    """The row of each VAE on one held-out set; the summary on rank 0 (None on the others)."""
    from sendvae_cli import __version__, distributed
    from sendvae_cli.eval.requests import common_resolution
    from sendvae_cli.io import write_result_json
    from sendvae_cli.progress import info, warn
    from sendvae_cli.vae.open import open_frozen_vae

    dist = distributed.init(device)
    show = dist.is_main and not quiet
    resolution = common_resolution(requests, resolution)
    open_held_out_images(options, registry, resolution)  # data errors come before any model is built
    vaes = []
    for request in requests:
        model = open_frozen_vae(request.ref, registry, random_weights=options.random_weights).model.to(dist.device)
        if resolution % model.config.downsample:
            raise UserError(f"VAE {request.ref}: downsamples by {model.config.downsample}, which does not divide "
                            f"--resolution {resolution}")
        if dist.device.type == "cpu":  # as train-vae holds its VAE on CPU, so that the rows match to the bit
            model.to(memory_format=torch.channels_last)
        vaes.append((request, model))
    if options.random_weights:
        warn("--random-weights: VAE bases given by name and the extractor are untrained; a smoke test")
    held = HeldOut(options, registry, resolution, dist)
    rows = []
    for request, model in vaes:
        info(f"evaluating {request.label} ({len(held.source)} images of {options.data})", show)
        rows.append({"label": request.label, "ref": request.ref, "row": evaluate(model, held)})
    if not dist.is_main:
        return None
    summary = {"producer": f"sendvae {__version__} eval-vae", "held_out": held.describe(), "rows": rows}
    if json_out is not None:
        write_result_json(json_out, summary, default=float)
    return summary


def render_rows(summary: dict[str, Any]):
    from rich.table import Table

    held = summary["held_out"]
    table = Table(title=f"Evaluation row: {held['rows']} held-out images of {held['data']} at {held['resolution']} px "
                        f"(probe: {held['probe_epochs']} epochs at most; rFD through {held['extractor']})",
                  title_justify="left")
    for column in ("VAE", "probe macro-F1", "probe micro-F1", "PSNR", "SSIM", "rFD"):
        table.add_column(column, justify="left" if column == "VAE" else "right")
    for entry in summary["rows"]:
        row = entry["row"]
        shown = ["-" if row[PREFIX + k] is None else f"{row[PREFIX + k]:.4f}" for k in METRICS]
        table.add_row(entry["label"], *shown)
    return table
