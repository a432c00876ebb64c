"""train-vae's configuration: the presets, the typed config, and the preset/flag merge.

`paper` is the published recipe; `tiny` a CPU smoke scale. A flag the user gives wins over the
preset; `from_flags` is the one place that merge happens. Every field is recorded in
OUT/config.json (see `train/loop.py`), so a resume with other result-changing values is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from sendvae_cli.train.loop import TrainConfig
from sendvae_cli.train.run_config import resolve

COMMON = {
    "seed": 0, "num_images": None, "lr": 3e-4, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0,
    "grad_clip": 1.0, "align_weight": 1.0, "align_start": 0, "mapper_depth": 1, "mapper_patch": None, "mapper_width": None,
    "mapper_hidden": 2048, "noise": True, "logvar_init": None,
    "recon": "l1", "recon_weight": 1.0, "lpips_weight": 1.0, "kl_weight": 1e-6, "gan_weight": 0.1,
    "disc_start": 0, "disc_lr": 1e-4, "ema": 0.0, "decoder_only": 0.0, "precision": "auto", "keep_checkpoints": 2,
    "steps": None, "epochs": None, "eval_probe_epochs": 200,
}
PRESETS: dict[str, dict[str, Any]] = {
    # The published recipe: ImageNet 256 px, 80 epochs at global batch 1024 (~100k steps).
    "paper": dict(COMMON, teacher="dinov2-b", vae="va-vae", resolution=256, batch_size=1024, micro_batch=32,
                  epochs=80, log_every=50, checkpoint_every=2000, sample_every=2000, stats_images=10000,
                  eval_every=5000, eval_images=1000),
    # CPU scale (the README's main job): `tiny-f4` (4x16x16 latent, no normalisation) from scratch,
    # MSE, lr 1e-3, a mapper 256 wide (the teacher's 1280 would be 3/4 of the step), no GAN (from
    # scratch it helps only once the decoder draws the shapes). What makes it learn in CPU minutes:
    # batches of 8 (twice the updates of 16 for the same images), the gradient clipped at 0.25
    # (without it the norm-free VAE meets loss spikes it does not recover from), the posterior's
    # std started at 0.14 (--logvar-init), and the alignment (weight 0.3) only from half-way, once
    # the VAE reconstructs, as the paper's pretrained VAE does. Measurements: docs/reproduce.md.
    # The main job adds 200 decoder-only steps (--steps 1400 --decoder-only 200), which keep the
    # hues on every float path measured; the preset leaves it at 0, as a share of its steps would
    # change every short run made from it.
    # Its evaluation (--eval-data) takes 250 held-out images, not 1000: on a CPU the extractor's
    # 224 px forward is most of an evaluation's time (benchmarks/eval_overhead.py).
    "tiny": dict(COMMON, teacher="dinov2-s", vae="tiny-f4", resolution=64, batch_size=8, micro_batch=8,
                 num_images=2000, steps=1200, lr=1e-3, grad_clip=0.25, recon="mse", gan_weight=0.0,
                 align_weight=0.3, align_start=600, mapper_width=256, mapper_hidden=512, logvar_init=-4.0,
                 log_every=10, checkpoint_every=200, sample_every=200, stats_images=256, eval_every=300,
                 eval_images=250),
}


@dataclass(kw_only=True)
class VAETrainConfig(TrainConfig):
    teacher: str
    vae: str
    resolution: int
    random_weights: bool = False
    # Send-VAE mapper and alignment
    align_weight: float = 1.0
    align_start: int = 0  # before this step the mapper learns on the detached latent
    mapper_depth: int = 1
    mapper_patch: int | None = None
    mapper_width: int | None = None  # None: the teacher's width (paper)
    mapper_hidden: int = 2048  # the projector MLP's hidden width (REPA's 2048)
    noise: bool = True
    # a VAE from random weights: the posterior's initial log-variance (None: PyTorch's init)
    logvar_init: float | None = None
    # the steps at the end in which only the decoder learns: a share below 1, a count from 1 (decoder_phase)
    decoder_only: float = 0.0
    # L_VAE
    recon: str = "l1"
    recon_weight: float = 1.0
    lpips_weight: float = 1.0
    kl_weight: float = 1e-6
    gan_weight: float = 0.1
    disc_start: int = 0
    disc_lr: float = 1e-4
    # export
    stats_images: int
    # local files (paths as strings, as config.json records them)
    teacher_weights: str | None = None
    teacher_features: str | None = None
    vae_weights: str | None = None
    disc_weights: str | None = None
    lpips_vgg_weights: str | None = None
    lpips_lin_weights: str | None = None
    # in-training evaluation (eval/vae_row.py): with eval_data, every eval_every steps and at the end
    eval_data: str | None = None
    eval_root: str | None = None
    eval_images: int
    eval_extractor: str | None = None  # None: the run's teacher
    eval_every: int
    eval_probe_epochs: int = 200  # sendvae probe's; early stopping ends it sooner
    keep_best: str | None = None  # probe or rfd: OUT/best holds the export of the best evaluation

    # The in-training evaluation's options: they never change the weights, so they may change on a resume.
    EVAL_FIELDS: ClassVar[tuple[str, ...]] = ("eval_data", "eval_root", "eval_images", "eval_extractor", "eval_every",
                                               "eval_probe_epochs", "keep_best")
    RUN_ONLY: ClassVar[tuple[str, ...]] = TrainConfig.RUN_ONLY + ("stats_images", "teacher_features") + EVAL_FIELDS
    ADDED: ClassVar[dict[str, Any]] = {**TrainConfig.ADDED, "logvar_init": None, "decoder_only": 0.0}

    def decoder_phase(self, total_steps: int) -> int:
        """The first step in which only the decoder learns (total_steps: no such phase).

        `decoder_only` below 1 is a share of the steps, rounded down; from 1 up, a number of steps."""
        if self.decoder_only >= 1:
            return total_steps - int(self.decoder_only)
        return total_steps - math.floor(total_steps * self.decoder_only + 1e-9)  # 1e-9: 0.29 * 100 is 28.999...

    def record(self) -> dict[str, Any]:
        """Without --eval-data the evaluation's options (preset defaults) are left out: they say
        nothing about the run, and a rerun from config.json (--config) must not find them given."""
        record = super().record()
        if not self.eval_data:
            for name in self.EVAL_FIELDS:
                record.pop(name, None)
        return record

    @classmethod
    def from_flags(cls, preset: str, explicit: Mapping[str, Any], **run: Any) -> "VAETrainConfig":
        """The preset, overridden by each flag given (None = not given), plus run settings."""
        merged = resolve(PRESETS[preset], explicit)
        if merged.get("logvar_init") == KEEP_INIT:  # given as 'none': PyTorch's init, whatever the preset says
            merged["logvar_init"] = None
        if explicit.get("steps") is None and explicit.get("epochs") is not None:
            merged["steps"] = None  # --epochs replaces the preset's step count
        # The preset's micro-batch is a per-device memory choice: the loop lowers it until it fits
        # the number of processes (train/loop.py, split_batch). A given one is kept as it is.
        merged["micro_batch_auto"] = explicit.get("micro_batch") is None
        paths = {k: (str(v) if v else None) for k, v in run.items() if k in PATH_FIELDS}
        rest = {k: v for k, v in run.items() if k not in PATH_FIELDS}
        return cls(**merged, **rest, **paths, preset=preset)


KEEP_INIT = "none"  # --logvar-init none
PATH_FIELDS = ("teacher_weights", "teacher_features", "vae_weights", "disc_weights", "lpips_vgg_weights",
               "lpips_lin_weights", "eval_root")
