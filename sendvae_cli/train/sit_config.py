"""train-sit's configuration: the presets, the typed config, and the preset/flag merge.

`paper` is the published recipe (SiT-XL/1, REPA on DINOv2-B at block 8, batch 256, 400k steps:
80 epochs of ImageNet); `tiny` a CPU smoke scale. A flag the user gives wins over the preset;
`from_flags` is the one place that merge happens. Every field is recorded in OUT/config.json
(see `train/loop.py`), so a resume with other result-changing values is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from sendvae_cli.train.loop import TrainConfig
from sendvae_cli.train.run_config import resolve

COMMON = {
    "seed": 0, "lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0, "grad_clip": 1.0,
    "cfg_prob": 0.1, "time_schedule": "uniform", "time_mean": 0.0, "proj_weight": 0.5, "precision": "auto", "keep_checkpoints": 2,
    "flip": "auto", "num_classes": None, "preview_count": 16, "preview_steps": 50, "preview_cfg": 1.0,
    "steps": None, "epochs": None, "attention": "auto", "qk_norm": None, "encoder_depth": None,
    "projector_width": None,
}
PRESETS: dict[str, dict[str, Any]] = {
    # The published recipe (REPA / REPA-E's train_ldm_only and the paper's SiT-XL/1 runs).
    "paper": dict(COMMON, model="SiT-XL/1", teacher="dinov2-b", batch_size=256, micro_batch=64, steps=400_000,
                  ema=0.9999, log_every=100, checkpoint_every=10_000, sample_every=10_000),
    # CPU minutes (the README's main job runs it with --model SiT-mini/4): lr 3e-3, which a model
    # this small takes (1e-4 barely moves in a thousand steps), with log-normal flow times centred
    # above the middle of the path (median t 0.62), where a sample's shape is decided; an EMA short
    # enough to follow them. The shape judge's figures behind the choice are in docs/reproduce.md.
    "tiny": dict(COMMON, model="SiT-tiny/1", teacher="dinov2-s", batch_size=32, micro_batch=32, steps=1200,
                 lr=3e-3, time_schedule="lognormal", time_mean=0.5, ema=0.999, log_every=10,
                 checkpoint_every=100, sample_every=100, preview_steps=25),
}


@dataclass(kw_only=True)
class SiTTrainConfig(TrainConfig):
    """`data` is the latent cache (LATENTS)."""

    model: str
    teacher: str | None = None
    random_weights: bool = False
    # REPA and the model
    proj_weight: float = 0.5
    # Architecture options: None = the generator's own (its spec's `arch`); given, they must be
    # options the generator declares (train/sit_trainer.py, architecture_overrides).
    encoder_depth: int | None = None
    projector_width: int | None = None
    qk_norm: bool | None = None
    cfg_prob: float = 0.1
    attention: str = "auto"
    compile: bool = False
    time_schedule: str = "uniform"
    time_mean: float = 0.0  # "lognormal": the mean of log(t / (1 - t)); 0 centres the times on 0.5
    # data
    num_classes: int | None = None
    flip: str = "auto"
    # sample grids
    preview_count: int = 16
    preview_steps: int = 50
    preview_cfg: float = 1.0
    # local files and sources (paths as strings, as config.json records them)
    images: str | None = None
    root: str | None = None  # where a dataset named by --images lives on disk
    init: str | None = None  # weights to start from (an export, a run, a REPA/REPA-E or LightningDiT .pt)
    teacher_weights: str | None = None
    teacher_features: str | None = None
    latent_stats: str | None = None
    vae: str | None = None
    vae_weights: str | None = None

    ADDED: ClassVar[dict[str, Any]] = {"time_mean": 0.0, "init": None}
    RUN_ONLY: ClassVar[tuple[str, ...]] = TrainConfig.RUN_ONLY + (
        "compile", "attention", "attention_backend", "vae", "vae_weights", "images", "root", "teacher_features",
        "preview_count", "preview_steps", "preview_cfg")

    def record(self) -> dict[str, Any]:
        record = super().record()
        if record["qk_norm"] is None:
            # Runs recorded before the option became "the generator's own unless given" hold false,
            # which is what every built-in generator's own is: they resume.
            record["qk_norm"] = False
        return record

    @classmethod
    def from_flags(cls, preset: str, explicit: Mapping[str, Any], **run: Any) -> "SiTTrainConfig":
        """The preset, overridden by each flag given (None = not given), plus run settings."""
        merged = resolve(PRESETS[preset], explicit)
        if explicit.get("steps") is None and explicit.get("epochs") is not None:
            merged["steps"] = None  # --epochs replaces the preset's step count
        # The preset's micro-batch is a per-device memory choice: the loop lowers it until it fits
        # the number of processes (train/loop.py, split_batch). A given one is kept as it is.
        merged["micro_batch_auto"] = explicit.get("micro_batch") is None
        paths = {k: (str(v) if v else None) for k, v in run.items() if k in PATH_FIELDS}
        rest = {k: v for k, v in run.items() if k not in PATH_FIELDS}
        return cls(**merged, **rest, **paths, preset=preset)


PATH_FIELDS = ("teacher_weights", "teacher_features", "latent_stats", "vae_weights", "init")
