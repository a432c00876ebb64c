"""The exported-VAE folder (`vae.safetensors` + `vae.json`) and the diffusers export.

Folder layout (format "sendvae-vae", version 1):

    vae.safetensors   LDM-layout weights (the keys of `AutoencoderKL.state_dict()`), float32
    vae.json          {"format", "format_version", "weights", "weights_sha256", "layout": "ldm",
                       "config_name", "architecture" (VAEConfig fields), "downsample",
                       "latent_channels", "latent_mean", "latent_std" (lists, or null when unknown),
                       "provenance" (free dict: base, source weights, teacher, steps, ...),
                       "producer" {"name", "version"}}

Writing is crash-safe. A new folder is written under a temporary name beside it and renamed
into place, so the final name never holds half an export. Into an existing folder (a training
run folder, or an earlier export) each file is written to a temporary name and renamed over the
old one, weights first and vae.json last; vae.json records the SHA-256 of the weights, so a
crash between the two renames is detected on load instead of silently pairing new weights with
old statistics.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from sendvae_cli.errors import UserError
from sendvae_cli.io import (atomic_file, fsync_folder, remove_stale_temporaries, save_safetensors, temporary_sibling,
                            write_errors)
from sendvae_cli.locks import hold_output_lock
from sendvae_cli.provenance import file_sha256
from sendvae_cli.vae.autoencoder import AutoencoderKL, VAEConfig, config_name
from sendvae_cli.vae.formats import LoadedVAE, build_vae, check_fits, diffusers_config, ldm_to_diffusers

FORMAT = "sendvae-vae"
FORMAT_VERSION = 1
WEIGHTS_NAME = "vae.safetensors"
INFO_NAME = "vae.json"


def is_exported(folder: Path) -> bool:
    return (Path(folder) / INFO_NAME).is_file()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _stats_list(values, channels: int, name: str) -> list[float] | None:
    if values is None:
        return None
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() != channels:
        raise ValueError(f"{name} has {values.numel()} values, the VAE has {channels} latent channels")
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} holds non-finite values")
    return [float(v) for v in values]


def _write_folder(folder: Path, writers: list[tuple[str, Callable[[Path], None]]]) -> Path:
    """Run each (file name, writer(path)) so that `folder` ends up holding them all, crash-safely.

    One export at a time per folder (`hold_output_lock`). Temporaries left by a killed export
    (`.NAME.tmp-PID-TAG`, beside the folder and inside it) are removed first; a full or read-only disk is one line naming the file, and whatever was
    there before (an earlier export) stays as it was.
    """
    folder = Path(folder).expanduser()
    with hold_output_lock(folder, option="export folder"):
        return _write_folder_locked(folder, writers)


def _write_folder_locked(folder: Path, writers: list[tuple[str, Callable[[Path], None]]]) -> Path:
    with write_errors(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder.parent, folder.name)
        if not folder.exists():
            tmp = temporary_sibling(folder)
            tmp.mkdir()
            try:
                for name, write in writers:
                    write(tmp / name)
                    _fsync(tmp / name)
                fsync_folder(tmp)
                os.rename(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_folder(folder.parent)
            return folder
    if not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    remove_stale_temporaries(folder)
    for name, write in writers:  # the last writer is the one that makes the export valid
        with atomic_file(folder / name) as tmp:
            write(tmp)
    return folder


def export_vae(model: AutoencoderKL | LoadedVAE, folder: Path, *, latent_mean=None, latent_std=None,
               provenance: Mapping[str, Any] | None = None) -> Path:
    """Write `folder/vae.safetensors` + `folder/vae.json`; returns the folder.

    `model` may be a LoadedVAE, whose statistics and provenance are used unless given here.
    latent_mean / latent_std: per-channel (C,) values (tensor or list), or None when unknown.
    """
    from sendvae_cli import __version__

    if isinstance(model, LoadedVAE):
        latent_mean = model.latent_mean if latent_mean is None else latent_mean
        latent_std = model.latent_std if latent_std is None else latent_std
        provenance = model.provenance if provenance is None else provenance
        model = model.model
    config: VAEConfig = model.config
    mean = _stats_list(latent_mean, config.latent_channels, "latent_mean")
    std = _stats_list(latent_std, config.latent_channels, "latent_std")
    if std is not None and min(std) <= 0:
        raise ValueError("latent_std must be positive")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    info: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights": WEIGHTS_NAME,
        "weights_sha256": None,
        "layout": "ldm",
        "config_name": config_name(config),
        "architecture": config.to_dict(),
        "downsample": config.downsample,
        "latent_channels": config.latent_channels,
        "latent_mean": mean,
        "latent_std": std,
        "provenance": json.loads(json.dumps(dict(provenance or {}), default=str)),
        "producer": {"name": "sendvae", "version": __version__},
    }

    def write_weights(path: Path) -> None:
        save_safetensors(state, path, metadata={"format": "pt", "layout": "ldm"})
        info["weights_sha256"] = file_sha256(path)

    def write_info(path: Path) -> None:
        path.write_text(json.dumps(info, indent=2) + "\n")

    return _write_folder(folder, [(WEIGHTS_NAME, write_weights), (INFO_NAME, write_info)])


def read_info(folder: Path, option: str = "--vae") -> dict[str, Any]:
    path = Path(folder) / INFO_NAME
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{option} {path}: not a readable vae.json ({type(error).__name__}: {error})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UserError(f"{option} {path}: not a sendvae VAE export (expected \"format\": \"{FORMAT}\")")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{option} {path}: format_version {version!r} is newer than this sendvae reads "
                        f"({FORMAT_VERSION}); upgrade sendvae")
    return info


def load_exported(folder: Path, *, option: str = "--vae", verify: bool = True) -> LoadedVAE:
    """An exported folder as a LoadedVAE (model on CPU, float32; `.info` holds vae.json)."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    info = read_info(folder, option)
    try:
        config = VAEConfig.from_dict(info["architecture"])
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{option} {folder / INFO_NAME}: bad \"architecture\" ({error})") from None
    weights = folder / str(info.get("weights") or WEIGHTS_NAME)
    if not weights.is_file():
        raise UserError(f"{option} {folder}: {weights.name} is missing (vae.json names it)")
    expected = info.get("weights_sha256")
    if verify and expected and file_sha256(weights) != expected:
        raise UserError(f"{option} {weights}: does not match the SHA-256 recorded in vae.json "
                        f"(an interrupted export or a replaced file); export again")
    try:
        state = load_file(str(weights))
    except Exception as error:  # noqa: BLE001
        raise UserError(f"{option} {weights}: not a readable safetensors file ({type(error).__name__}: {error})") from None
    check_fits(config, state, path=weights, what="the architecture in vae.json", option=option)
    model = build_vae(config, state, copy=False)
    mean = std = None
    if info.get("latent_mean") is not None and info.get("latent_std") is not None:
        mean = torch.tensor(info["latent_mean"], dtype=torch.float32)
        std = torch.tensor(info["latent_std"], dtype=torch.float32)
        if mean.numel() != config.latent_channels or std.numel() != config.latent_channels:
            raise UserError(f"{option} {folder / INFO_NAME}: latent_mean / latent_std do not have "
                            f"{config.latent_channels} values")
    provenance = {
        "format": "exported-folder",
        "weights": str(folder),
        "config": config_name(config),
        "latent_stats": str(folder / INFO_NAME) if mean is not None else None,
        "exported": info.get("provenance", {}),
    }
    return LoadedVAE(model, mean, std, provenance, info=info)


def export_diffusers(model: AutoencoderKL | LoadedVAE, folder: Path, *, latent_mean=None, latent_std=None) -> Path:
    """Write a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors).

    `diffusers.AutoencoderKL.from_pretrained(folder)` loads it. Per-channel statistics go to
    latents_mean / latents_std with scaling_factor 1.0 (see `formats.diffusers_config`).
    """
    if isinstance(model, LoadedVAE):
        latent_mean = model.latent_mean if latent_mean is None else latent_mean
        latent_std = model.latent_std if latent_std is None else latent_std
        model = model.model
    config: VAEConfig = model.config
    try:
        cfg = diffusers_config(config, _stats_list(latent_mean, config.latent_channels, "latent_mean"),
                               _stats_list(latent_std, config.latent_channels, "latent_std"))
    except ValueError as error:
        raise UserError(f"{folder}: cannot export to diffusers: {error}") from None
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    state = ldm_to_diffusers(state, len(config.ch_mult))

    def write_weights(path: Path) -> None:
        save_safetensors(state, path, metadata={"format": "pt"})

    def write_config(path: Path) -> None:
        path.write_text(json.dumps(cfg, indent=2) + "\n")

    return _write_folder(folder, [("diffusion_pytorch_model.safetensors", write_weights), ("config.json", write_config)])


__all__ = ["FORMAT", "FORMAT_VERSION", "WEIGHTS_NAME", "INFO_NAME", "is_exported", "export_vae", "read_info",
           "load_exported", "export_diffusers"]
