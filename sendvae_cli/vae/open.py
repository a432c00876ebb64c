"""One door to every VAE: `open_vae(ref)` for whatever a user writes after `--vae`.

`ref` is, in this order:
1. a registered VAE base name or alias (`va-vae`, `sd-vae`, `tiny`, ...), unless it contains a
   path separator or ends in a weights suffix; `weights` / `random_weights` go to the base;
2. an exported folder (holds vae.json);
3. a diffusers AutoencoderKL folder (holds config.json, or vae/config.json for a pipeline);
4. a folder holding one VAE weights file (REPA-E's `pretrained/vavae/` layout), or such a
   file itself (`.pt` / `.pth` / `.ckpt` / `.bin` / `.safetensors`, LDM or diffusers layout,
   architecture inferred from the tensor shapes, latent statistics found beside it).

Anything else is a one-line UserError: an unknown name lists the bases and the closest match.
`build_base` is the factory of the built-in bases (see `sendvae_cli.vae.builtin`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sendvae_cli.errors import UserError, WeightsNotFound
from sendvae_cli.weights import hf_hint, is_unreachable
from sendvae_cli.vae.autoencoder import VAE_CONFIGS, VAEConfig, config_name
from sendvae_cli.vae.export import is_exported, load_exported
from sendvae_cli.vae.formats import (DIFFUSERS_WEIGHT_NAMES, WEIGHT_SUFFIXES, LoadedVAE, summarise_keys, build_vae,
                                     check_fits, config_from_diffusers, diffusers_to_ldm, find_vae_state,
                                     load_weights_file, read_tensor_file)


#################################################################################
#                          Folders and the Hugging Face hub                     #
#################################################################################


def _same_architecture(a: VAEConfig, b: VAEConfig) -> bool:
    """Same tensors and same GroupNorm groups (known for folders, unlike bare files)."""
    return a.architecture_key() == b.architecture_key() and a.norm_groups == b.norm_groups


def _is_companion(path: Path) -> bool:
    name = path.name.lower()
    return "latents-stats" in name or "latents_stats" in name or "discriminator" in name


def find_vae_file(folder: Path, option: str) -> Path:
    """The one VAE weights file in a folder such as REPA-E's `pretrained/vavae/`."""
    def candidates(paths):
        return sorted(p for p in paths if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not _is_companion(p))

    files = candidates(folder.iterdir()) or candidates(folder.rglob("*"))  # hub repos may nest one level
    if len(files) == 1:
        return files[0]
    if not files:
        raise UserError(f"{option} {folder}: folder holds no VAE weights (vae.json, config.json, or a .pt/.safetensors file)")
    raise UserError(f"{option} {folder}: several weight files ({', '.join(p.name for p in files[:4])}); name one of them")


def load_diffusers_folder(folder: Path, *, config: VAEConfig | None = None, what: str = "the VAE",
                          option: str = "--vae-weights") -> LoadedVAE:
    """A diffusers AutoencoderKL folder: config.json + diffusion_pytorch_model.safetensors (or .bin)."""
    folder = Path(folder).expanduser()
    cfg_path = folder / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{option} {cfg_path}: not a readable diffusers config ({type(error).__name__}: {error})") from None
    try:
        folder_config = config_from_diffusers(cfg)
    except ValueError as error:
        raise UserError(f"{option} {cfg_path}: {error}") from None
    if config is not None and not _same_architecture(config, folder_config):
        raise UserError(f"{option} {folder}: holds {folder_config.describe()}, which does not fit {what} {config.describe()}")
    config = config or folder_config
    weights = next((folder / n for n in DIFFUSERS_WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise UserError(f"{option} {folder}: diffusers folder holds none of {', '.join(DIFFUSERS_WEIGHT_NAMES[:2])}")
    raw = read_tensor_file(weights, option)
    state, layout, extras, _, _ = find_vae_state(raw, weights, option)
    if layout == "diffusers":
        state = diffusers_to_ldm(state)
    check_fits(config, state, path=weights, what=what, option=option)
    model = build_vae(config, state, copy=False)
    mean = std = None
    if cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
        mean = torch.tensor(cfg["latents_mean"], dtype=torch.float32).flatten()
        std = torch.tensor(cfg["latents_std"], dtype=torch.float32).flatten()
        if mean.numel() != config.latent_channels or std.numel() != config.latent_channels:
            raise UserError(f"{option} {cfg_path}: latents_mean / latents_std have {mean.numel()} / {std.numel()} "
                            f"values, the VAE has {config.latent_channels} channels")
    provenance = {
        "format": "diffusers-folder",
        "weights": str(folder),
        "config": config_name(config),
        "latent_stats": str(cfg_path) if mean is not None else None,
        "diffusers_scaling_factor": cfg.get("scaling_factor"),
        "diffusers_shift_factor": cfg.get("shift_factor"),
        "ignored_keys": summarise_keys(extras),
    }
    return LoadedVAE(model, mean, std, provenance, extras)


#################################################################################
#                                 Hugging Face hub                              #
#################################################################################


def fetch_hub_folder(repo_id: str, *, what: str, allow_patterns: list[str] | None = None) -> Path:
    """A local snapshot of a hub repository (from the cache when offline), or WeightsNotFound."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as error:  # noqa: BLE001
        if not is_unreachable(error):
            raise
        files = f" (files {', '.join(allow_patterns)})" if allow_patterns else ""
        raise WeightsNotFound(
            f"{what}: pretrained weights not found: Hugging Face repo {repo_id}{files} is neither cached nor reachable. "
            f"{hf_hint(repo_id)} Or pass --vae-weights PATH (a REPA-E .pt, a diffusers folder or an exported VAE folder), "
            f"or --random-weights for a smoke run."
        ) from None


#################################################################################
#                                  Entry points                                 #
#################################################################################


def open_path(path: Path, *, config: VAEConfig | None = None, what: str = "the VAE", option: str = "--vae",
              stats: Path | None = None) -> LoadedVAE:
    """A VAE from a local file or folder; with `config`, the weights must have that architecture."""
    path = Path(path).expanduser()
    if path.is_dir():
        if is_exported(path):
            loaded = load_exported(path, option=option)
            if config is not None and not _same_architecture(config, loaded.config):
                raise UserError(f"{option} {path}: holds {loaded.config.describe()}, which does not fit {what} "
                                f"{config.describe()}")
            return loaded
        if is_exported(path / "export"):  # a train-vae run folder stands for its exported VAE
            return open_path(path / "export", config=config, what=what, option=option, stats=stats)
        if is_training_run(path):
            raise UserError(f"{option} {path}: a train-vae run folder with no export/ yet (the run has not finished); "
                            f"rerun its train-vae command to finish and export it")
        if (path / "config.json").is_file():
            return load_diffusers_folder(path, config=config, what=what, option=option)
        if (path / "vae" / "config.json").is_file():  # a whole diffusers pipeline
            return load_diffusers_folder(path / "vae", config=config, what=what, option=option)
        return load_weights_file(find_vae_file(path, option), config=config, what=what, option=option, stats=stats)
    if path.is_file():
        return load_weights_file(path, config=config, what=what, option=option, stats=stats)
    raise UserError(f"{option} {path}: no such file or folder")


def is_training_run(path: Path) -> bool:
    """A `train-vae` run folder: checkpoints/, or a config.json written by sendvae (a diffusers one never is)."""
    if (path / "checkpoints").is_dir():
        return True
    try:
        producer = json.loads((path / "config.json").read_text()).get("producer", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(producer, str) and producer.startswith("sendvae")


def recorded_resolution(ref: str | Path) -> int | None:
    """The image resolution an exported VAE (or a train-vae run folder's export) was trained at,
    read from its vae.json without building it; None for anything else."""
    path = Path(ref).expanduser()
    for info in (path / "vae.json", path / "export" / "vae.json"):
        try:
            value = (json.loads(info.read_text()).get("provenance") or {}).get("resolution")
        except (OSError, ValueError, AttributeError):
            continue
        return int(value) if value else None
    return None


def looks_like_path(ref: str) -> bool:
    """True when `ref` is written as a path (a separator, a leading . or ~, a weights suffix), not a base name."""
    return (os.sep in ref or "/" in ref or ref.startswith((".", "~")) or ref.endswith(WEIGHT_SUFFIXES))


def open_vae(ref: str | Path, registry: Any = None, *, weights: Path | None = None,
             random_weights: bool = False) -> LoadedVAE:
    """A VAE from a base name, an exported folder, a diffusers folder or a weights file."""
    text = str(ref)
    if isinstance(ref, Path) or looks_like_path(text):
        if weights is not None or random_weights:
            raise UserError(f"--vae {text}: --vae-weights / --random-weights go with a VAE base name (e.g. va-vae), "
                            f"not with a path")
        return open_path(Path(text))
    if registry is None:
        from sendvae_cli.registry import get_registry

        registry = get_registry()
    try:
        spec = registry.vae_base(text)
    except UserError:
        if Path(text).exists() and weights is None and not random_weights:
            return open_path(Path(text))  # a local folder named like no base
        raise
    return spec.build(weights=weights, random_weights=random_weights)


# --------------------------------------------------------------------------------------------
#                      The VAE that wrote the latents (a cache, an export)
# --------------------------------------------------------------------------------------------

RANDOM_WEIGHTS = re.compile(r"random\(seed=(-?\d+)\)")  # how a cache or export records an untrained VAE


def open_recorded_vae(ref: str, weights: str | None, registry: Any = None) -> LoadedVAE:
    """The VAE a latent cache or a generator export records: `ref`, rebuilt under its seed when
    its weights are recorded as random(seed=N) (the global random state is left as it was)."""
    seed = RANDOM_WEIGHTS.fullmatch(str(weights or ""))
    if seed:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed.group(1)))
            return open_vae(ref, registry, random_weights=True)
    return open_vae(ref, registry)


@dataclass(frozen=True)
class VAEMatch:
    """Whether a VAE is the one that wrote some latents: its weights digest against the recorded one."""

    digest: str  # this VAE's weights sha256 (`provenance.weights_sha256`)
    recorded: str | None  # the one the latents record; None: nothing to compare with

    @property
    def same(self) -> bool:
        return not self.recorded or self.digest == self.recorded


def match_vae(loaded: LoadedVAE, recorded: str | None) -> VAEMatch:
    """Is `loaded` the VAE whose weights sha256 the latents (or an export) record?"""
    from sendvae_cli.provenance import weights_sha256

    return VAEMatch(weights_sha256(loaded.model), recorded or None)


def open_frozen_vae(ref: str | Path, registry: Any = None, *, seed: int = 0, random_weights: bool = False) -> LoadedVAE:
    """`open_vae` for evaluation: frozen, in eval mode; `random_weights` applies to base names only
    and is seeded, so the same untrained VAE (and so its cached features) comes back on a rerun."""
    named = not looks_like_path(str(ref)) and not Path(ref).exists()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaded = open_vae(ref, registry, random_weights=random_weights and named)
    loaded.model.eval().requires_grad_(False)
    return loaded

def _base_config(spec) -> VAEConfig:
    config = spec.options.get("config")
    if isinstance(config, str):
        if config not in VAE_CONFIGS:
            raise UserError(f"VAE base {spec.name!r}: unknown architecture {config!r} "
                            f"(known: {', '.join(VAE_CONFIGS)})")
        return VAE_CONFIGS[config]
    try:
        return VAEConfig.from_dict(config or {})
    except (TypeError, ValueError) as error:
        raise UserError(f"VAE base {spec.name!r}: bad architecture options ({error})") from None


def build_base(spec, *, weights: Path | None = None, random_weights: bool = False) -> LoadedVAE:
    """Factory of the built-in bases: local weights, random init, or the base's hub repository."""
    config = _base_config(spec)
    what = f"VAE base {spec.name!r}"
    repo = spec.options.get("hub")
    if weights is not None:
        loaded = open_path(Path(weights), config=config, what=what, option="--vae-weights")
    elif random_weights or not repo:
        loaded = LoadedVAE(build_vae(config), provenance={"format": "random-init", "weights": None,
                                                            "config": config_name(config), "latent_stats": None})
    else:
        files = list(spec.options.get("hub_files") or ()) or None
        folder = fetch_hub_folder(repo, what=what, allow_patterns=files)
        loaded = open_path(folder, config=config, what=what, option=f"hf:{repo}")
        loaded.provenance["local_path"] = loaded.provenance.get("weights")
        loaded.provenance["weights"] = f"hf:{repo}"
    loaded.provenance = {"base": spec.name, **loaded.provenance}
    return loaded


__all__ = ["open_vae", "open_path", "build_base", "load_diffusers_folder", "find_vae_file", "fetch_hub_folder"]
