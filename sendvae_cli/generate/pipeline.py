"""`sendvae sample`: draw N images from a generator into a resumable sample folder.

Each process takes the sample indices rank, rank + world, ... that have no PNG yet, in batches:
per-sample noise (noise.py) -> ODE / SDE sampler with CFG (flow/samplers.py) -> undo the latent
normalisation -> VAE decode -> uint8 -> PNG, encoded on a thread pool while the device samples the
next batch. When every PNG exists, rank 0 streams them into the ADM .npz and marks the manifest complete.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sendvae_cli.distributed import main_first
from sendvae_cli.errors import UserError
from sendvae_cli.flow.samplers import function_evaluations, ode_sample, sde_sample
from sendvae_cli.generators.base import FlowGenerator
from sendvae_cli.generate.folder import FORMAT, FORMAT_VERSION, GRID, SampleFolder
from sendvae_cli.generate.grid import grid_classes, save_grid
from sendvae_cli.generate.labels import describe as describe_labels
from sendvae_cli.generate.labels import make_labels
from sendvae_cli.generate.noise import SampleNoise
from sendvae_cli.generate.npz import write_npz
from sendvae_cli.generate.presets import PRECISIONS
from sendvae_cli.images import to_uint8
from sendvae_cli.io import write_errors
from sendvae_cli.outcome import set_resume
from sendvae_cli.progress import info, progress_bar
from sendvae_cli.stopping import Interrupted, stop_on_signals


@dataclass
class SamplingModel:
    """What sampling needs from a trained generator (opened by `generate.source`)."""

    model: FlowGenerator                        # forward(x, t, y) -> v
    num_classes: int                            # 0: unconditional
    latent_shape: tuple[int, int, int]          # (C, h, w) the model samples
    latent_mean: torch.Tensor                   # (C,) statistics the model was trained with
    latent_std: torch.Tensor
    vae: torch.nn.Module                        # .decode(z) -> images in [-1, 1]
    identity: dict[str, Any] = field(default_factory=dict)  # model / VAE paths and digests (manifest)

    @property
    def null_class(self) -> int | None:
        """The label CFG compares against: the generator's own (None for an unconditional model)."""
        return self.model.null_class if self.num_classes else None


@dataclass(frozen=True)
class SampleSettings:
    """Everything that decides the images (a folder is resumed only with the same settings)."""

    count: int
    mode: str = "ode"
    steps: int = 50
    heun: bool = False
    cfg_scale: float = 1.0
    guidance_low: float = 0.0
    guidance_high: float = 1.0
    labels: str = "balanced"
    class_id: int | None = None
    seed: int = 0
    precision: str = "fp32"                     # resolved: fp32, bf16 or fp64
    cfg_channels: int | None = None             # guide the first k latent channels only (None: all)
    timestep_shift: float = 1.0                 # LightningDiT's ODE grid shift (1: uniform)

    @property
    def nfe(self) -> int:
        return function_evaluations(self.mode, self.steps, self.heun)


@dataclass
class Timing:
    model_s: float = 0.0
    decode_s: float = 0.0
    write_wait_s: float = 0.0
    npz_s: float = 0.0
    images: int = 0


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: expected {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#################################################################################
#                               One batch of samples                            #
#################################################################################

class Drawer:
    """Turns sample indices (+ labels) into uint8 images; the same for full runs and grids."""

    def __init__(self, gen: SamplingModel, settings: SampleSettings, device: torch.device, *,
                 compile: bool = False, decode_batch: int = 32):
        self.gen, self.settings, self.device = gen, settings, device
        self.dtype = torch.float64 if settings.precision == "fp64" else torch.float32
        gen.model.to(device=device, dtype=self.dtype).eval().requires_grad_(False)
        gen.vae.to(device=device, dtype=self.dtype).eval().requires_grad_(False)
        self.forward = torch.compile(gen.model) if compile else gen.model
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if settings.precision == "bf16"
                         else nullcontext())
        self.mean = gen.latent_mean.to(device=device, dtype=self.dtype).view(1, -1, 1, 1)
        self.std = gen.latent_std.to(device=device, dtype=self.dtype).view(1, -1, 1, 1)
        self.decode_batch = decode_batch
        self.timing = Timing()

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with self.autocast:
            return self.forward(x, t, y)

    def latents(self, indices: list[int], labels: np.ndarray | None) -> torch.Tensor:
        s = self.settings
        noise = SampleNoise(s.seed, indices, self.gen.latent_shape, self.device)
        x1 = noise.draw().to(self.dtype)
        y = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=self.device)
        common = dict(cfg_scale=s.cfg_scale, guidance_low=s.guidance_low, guidance_high=s.guidance_high,
                      null_class=self.gen.null_class, cfg_channels=s.cfg_channels)
        if s.mode == "sde":
            return sde_sample(self.model_fn, x1, y, steps=s.steps, noise_fn=noise.step_noise, **common)
        return ode_sample(self.model_fn, x1, y, steps=s.steps, heun=s.heun, timestep_shift=s.timestep_shift,
                          **common)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        z = latents.to(self.dtype) * self.std + self.mean
        return np.concatenate([to_uint8(self.gen.vae.decode(z[i:i + self.decode_batch]))
                               for i in range(0, len(z), self.decode_batch)])

    def __call__(self, indices: list[int], labels: np.ndarray | None) -> np.ndarray:
        start = time.perf_counter()
        latents = self.latents(indices, labels)
        _sync(self.device)
        middle = time.perf_counter()
        images = self.decode(latents)
        self.timing.model_s += middle - start
        self.timing.decode_s += time.perf_counter() - middle
        self.timing.images += len(indices)
        return images


#################################################################################
#                                   Full run                                    #
#################################################################################

def manifest_settings(settings: SampleSettings, gen: SamplingModel, device: torch.device) -> dict[str, Any]:
    s = asdict(settings)
    # Recorded only when used, so that folders sampled before these settings existed still resume.
    for key, default in (("cfg_channels", None), ("timestep_shift", 1.0)):
        if s[key] == default:
            s.pop(key)
    s["labels"] = describe_labels(settings.labels, gen.num_classes, settings.class_id)
    s.pop("class_id")
    s["noise_device"] = device.type  # CPU and CUDA generators draw different numbers
    s["model_sha256"] = gen.identity.get("model_sha256")
    s["vae_sha256"] = gen.identity.get("vae_sha256")
    return dict(sorted(s.items()))


def _draw(drawer: Drawer, folder: SampleFolder, todo: list[int], labels, out: Path, count: int, dist, *,
          batch_size: int, writers: int, done: int, show: bool) -> None:
    """Draw this process's missing samples in batches, PNGs written by a pool of threads; on
    SIGTERM / SIGINT the batch in hand is finished and written, then `Interrupted`."""
    pending: list[Future] = []
    drawn = 0
    with stop_on_signals() as stop, ThreadPoolExecutor(max_workers=writers) as pool, \
            progress_bar("sampling", count, completed=done, show=show and dist.is_main) as bar:
        for start in range(0, len(todo), batch_size):
            if stop.requested:  # the batch in hand was finished and is written below
                break
            indices = todo[start:start + batch_size]
            images = drawer(indices, None if labels is None else labels[indices])
            pending += [pool.submit(folder.write_png, i, image) for i, image in zip(indices, images)]
            waited = time.perf_counter()
            while len(pending) > 2 * batch_size:  # bound the images held in memory
                pending.pop(0).result()
            drawer.timing.write_wait_s += time.perf_counter() - waited
            bar.advance(len(indices) * dist.world)
            drawn += len(indices)
        waited = time.perf_counter()
        for future in pending:
            future.result()
        drawer.timing.write_wait_s += time.perf_counter() - waited
    if stop.requested and drawn < len(todo):
        raise Interrupted(f"--out {out}: {stop.name} received; stopped after {drawn} of the {len(todo)} samples "
                          f"this process had left, the images written are kept. Rerun the same command to "
                          f"continue", stop.signum)


def _write_batch(folder: SampleFolder, out: Path, count: int, labels, writers: int) -> tuple[int, int]:
    """Rank 0, once every PNG is there: the ADM .npz of them all; returns the image size."""
    missing = folder.missing(range(count))
    if missing:
        raise UserError(f"--out {out}: {len(missing)} samples missing after the run (first: "
                        f"{folder.png(missing[0])}); rerun the same command")
    with ThreadPoolExecutor(max_workers=writers) as pool:
        first = folder.read_png(0)
        with write_errors(folder.npz, kept=f"the {count} PNGs are kept"):
            write_npz(folder.npz, folder.read_all(pool), count, first.shape[0], first.shape[1], labels)
    return first.shape[0], first.shape[1]


def sample_to_folder(gen: SamplingModel, settings: SampleSettings, out: Path, dist, *, batch_size: int,
                     compile: bool = False, show: bool = True, writers: int = 4,
                     guard: Callable[[Path], AbstractContextManager] = lambda out: nullcontext()) -> dict[str, Any]:
    """Fill OUT with `settings.count` samples (resuming), then the .npz; returns the manifest.

    `guard(out)` is held around the run by rank 0 (a hook for an exclusive lock on OUT).
    """
    folder = SampleFolder(out, settings.count)
    described = manifest_settings(settings, gen, dist.device)

    def complete(manifest: dict[str, Any] | None) -> bool:
        return manifest is not None and manifest.get("status") == "complete" and folder.npz.is_file()

    def prepare(held: ExitStack) -> None:
        """Rank 0: lock OUT, check it, and make it a sample folder of these settings."""
        held.enter_context(guard(Path(out)))
        if not complete(folder.check(described)):
            folder.tidy()
            folder.write_manifest(_manifest(described, settings, gen, status="running"))

    with ExitStack() as held:
        began = time.perf_counter()
        # The others look at OUT only once rank 0 made it a sample folder: checked while rank 0
        # writes the manifest, a fresh OUT would look like a foreign folder to them.
        main_first(dist, lambda: prepare(held))
        existing = folder.check(described)
        if complete(existing):
            info(f"{out} is already complete ({settings.count} images); nothing to do", show and dist.is_main)
            return {**existing, "runs": folder.read_runs()}
        set_resume("rerun the same command: it draws only the samples still missing")

        labels = make_labels(settings.labels, settings.count, gen.num_classes, settings.seed, settings.class_id)
        todo = folder.missing(range(dist.rank, settings.count, dist.world))
        done = settings.count - len(folder.missing(range(settings.count))) if dist.is_main else 0
        drawer = Drawer(gen, settings, dist.device, compile=compile)
        _draw(drawer, folder, todo, labels, out, settings.count, dist, batch_size=batch_size, writers=writers,
              done=done, show=show)
        dist.barrier()

        manifest = None
        if dist.is_main:
            npz_start = time.perf_counter()
            size = _write_batch(folder, out, settings.count, labels, writers)
            drawer.timing.npz_s = time.perf_counter() - npz_start
            folder.append_run(_run_record(drawer.timing, time.perf_counter() - began, dist, batch_size, len(todo)))
            manifest = _manifest(described, settings, gen, status="complete", image_size=list(size))
            folder.write_manifest(manifest)
            info(f"{settings.count} images in {folder.images}, ADM batch {folder.npz}", show)
        dist.barrier()
        return {**(manifest or folder.read_manifest()), "runs": folder.read_runs()}


def _run_record(timing: Timing, seconds: float, dist, batch_size: int, drawn: int) -> dict[str, Any]:
    return {"seconds": round(seconds, 3), "images_drawn_by_rank0": drawn, "world_size": dist.world,
            "batch_size": batch_size, "device": str(dist.device),
            "model_s": round(timing.model_s, 3), "decode_s": round(timing.decode_s, 3),
            "write_wait_s": round(timing.write_wait_s, 3), "npz_s": round(timing.npz_s, 3)}


def _manifest(described, settings: SampleSettings, gen: SamplingModel, *, status: str,
              image_size=None) -> dict[str, Any]:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "status": status,
        "settings": described,
        "sampler": (f"ode-{'heun' if settings.heun else 'euler'}" if settings.mode == "ode" else "sde-euler-maruyama"),
        "nfe": settings.nfe,
        "cfg": {"scale": settings.cfg_scale, "interval": [settings.guidance_low, settings.guidance_high],
                "channels": "all" if settings.cfg_channels is None else settings.cfg_channels,
                "null_class": gen.null_class},
        "time_grid": "uniform" if settings.timestep_shift == 1.0 else f"shifted ({settings.timestep_shift})",
        "num_classes": gen.num_classes,
        "model": {k: v for k, v in gen.identity.items() if k.startswith("model")},
        "vae": {k: v for k, v in gen.identity.items() if k.startswith("vae")},
        "files": {"images": "images/", "npz": "samples.npz", "runs": "runs.jsonl"},
    }
    if image_size is not None:
        manifest["image_size"] = image_size
    return manifest


#################################################################################
#                                 Preview grid                                  #
#################################################################################

def sample_grid(gen: SamplingModel, settings: SampleSettings, path: Path, device: torch.device, *, rows: int,
                columns: int, batch_size: int, compile: bool = False) -> Path:
    """rows classes (spread over the label range, or --class) x columns samples -> one PNG."""
    if gen.num_classes:
        classes = [settings.class_id] * rows if settings.class_id is not None else grid_classes(rows, gen.num_classes)
        labels = np.repeat(np.asarray(classes, dtype=np.int64), columns)
        names = [f"class {k}" for k in classes]
    else:
        labels, names = None, [""] * rows
    indices = list(range(len(names) * columns))
    drawer = Drawer(gen, settings, device, compile=compile)
    images = np.concatenate([drawer(indices[i:i + batch_size], None if labels is None else labels[i:i + batch_size])
                             for i in range(0, len(indices), batch_size)])
    return save_grid(Path(path), images, names, columns)


__all__ = ["SamplingModel", "SampleSettings", "Drawer", "GRID", "resolve_precision",
           "sample_to_folder", "sample_grid", "to_uint8"]
