"""MODEL for `sendvae sample`: a generator, the latent statistics it was trained with, and its VAE.

MODEL is a generator export folder, a train-sit run folder (its `export/`), a REPA / REPA-E SiT or
hustvl/LightningDiT checkpoint (`.pt`), or any of these on the Hugging Face hub as `hf:ORG/NAME`
(the repository's one checkpoint or export) or `hf:ORG/NAME/FILE`, read from huggingface_hub's
cache (downloaded unless HF_HUB_OFFLINE=1). The VAE is the one the export records (its
`vae.source`, checked against the recorded weights digest) unless `--vae` names one; a different
VAE is refused by digest unless forced, since decoding with another VAE gives plausible-looking
but wrong images.

Latent statistics, first found wins: `--latent-stats` (REPA-E's `*-latents-stats.pt`: latents_scale
= 1/std, latents_bias = mean; or mean/std); the export's (train-sit records the cache's); a REPA-E
checkpoint's `bn` buffers; the statistics beside the VAE's weights; REPA's SD-VAE scale 0.18215.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sendvae_cli.errors import UserError
from sendvae_cli.generate.pipeline import SamplingModel
from sendvae_cli.provenance import file_sha256

HUB_PREFIX = "hf:"


def hub_generator(ref: str) -> Path:
    """The local path of a generator named `hf:ORG/NAME[/FILE]`, from huggingface_hub's cache."""
    from sendvae_cli.weights import is_unreachable

    parts = [p for p in ref[len(HUB_PREFIX):].split("/") if p]
    if len(parts) < 2:
        raise UserError(f"MODEL {ref}: expected hf:ORG/NAME or hf:ORG/NAME/FILE")
    repo, file = "/".join(parts[:2]), "/".join(parts[2:]) or None
    fetch = f"hf download {repo}" + (f" {file}" if file else "")
    how = (f"on a machine with network run `{fetch}` and copy the Hugging Face cache (HF_HOME, default "
           f"~/.cache/huggingface) here")
    try:
        from huggingface_hub import snapshot_download

        # Without a file name, only what a generator can be (a repository may hold a VAE and more).
        patterns = [file] if file else ["*.pt", "*.pth", "*.json", "*.safetensors"]
        folder = Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as error:  # noqa: BLE001 - only "not cached, no network" becomes a user error
        if not is_unreachable(error):
            raise
        raise UserError(f"MODEL {ref}: not in the Hugging Face cache and the hub is not reachable; {how}") from None
    if file:
        if not (folder / file).is_file():
            raise UserError(f"MODEL {ref}: {file} is not in the cached snapshot of {repo}; {how}")
        return folder / file
    from sendvae_cli.generators.export import export_folder

    if export_folder(folder) is not None:
        return folder
    checkpoints = sorted(p for p in folder.rglob("*") if p.suffix in (".pt", ".pth") and p.is_file())
    if len(checkpoints) == 1:
        return checkpoints[0]
    if not checkpoints:
        raise UserError(f"MODEL {ref}: the cached snapshot of {repo} holds no generator export or .pt; {how}")
    names = ", ".join(str(p.relative_to(folder)) for p in checkpoints[:4])
    raise UserError(f"MODEL {ref}: {repo} holds several checkpoints ({names}); name one as hf:{repo}/FILE")


def _holds_a_vae(path: Path) -> bool:
    from sendvae_cli.vae.formats import find_vae_state, read_tensor_file

    try:
        find_vae_state(read_tensor_file(path, "MODEL"), path, "MODEL")
    except UserError:
        return False
    return True


def _not_a_generator(path: Path) -> UserError:
    from sendvae_cli.vae.export import is_exported

    if path.is_dir() and is_exported(path):
        return UserError(f"MODEL {path}: is a VAE export (vae.json), not a generator; give the generator as MODEL "
                         f"and the VAE with --vae")
    if not path.exists():
        return UserError(f"MODEL {path}: no such file or folder")
    if path.is_file() and _holds_a_vae(path):
        return UserError(f"MODEL {path}: is a VAE checkpoint, not a generator; give the generator as MODEL "
                         f"and the VAE with --vae")
    return UserError(f"MODEL {path}: not a generator (expected a train-sit run or export folder holding "
                     f"generator.json, or a REPA/REPA-E SiT or LightningDiT .pt checkpoint)")


def _open_recorded_vae(record: dict[str, Any], model_path: Path):
    """The VAE an export records, from its `source` (a name or path) and `weights` hint."""
    from sendvae_cli.vae.open import open_recorded_vae

    source = record.get("source")
    if not source:
        raise UserError(f"MODEL {model_path}: the export records no VAE location; pass --vae")
    try:
        return open_recorded_vae(str(source), record.get("weights"))
    except UserError as error:
        raise UserError(f"MODEL {model_path}: cannot open the VAE it records ({source}): {error}; pass --vae") from None


def open_generator(model_path: Path, *, vae: str | None = None, latent_stats: Path | None = None,
                   force_vae: bool = False, build=None) -> SamplingModel:
    """`build(generator_name, arch) -> model` rebuilds plugin generators (the registry's); see load_generator_export."""
    from sendvae_cli.generators.export import load_generator_export, looks_like_generator
    from sendvae_cli.vae.formats import read_latent_stats
    from sendvae_cli.vae.open import match_vae, open_vae

    model_path = Path(model_path).expanduser()
    if not looks_like_generator(model_path):
        raise _not_a_generator(model_path)
    is_checkpoint = model_path.is_file()
    if is_checkpoint and vae is None:
        raise UserError(f"MODEL {model_path}: a .pt checkpoint records no VAE; pass --vae "
                        f"(and --latent-stats unless the VAE's statistics file lies beside it)")
    given_stats = read_latent_stats(latent_stats, option="--latent-stats") if latent_stats is not None else None
    loaded = load_generator_export(model_path, option="MODEL", build=build)
    meta = loaded.meta or {}

    opened = open_vae(vae) if vae is not None else _open_recorded_vae(loaded.vae, model_path)
    match = match_vae(opened, loaded.vae.get("sha256"))
    vae_sha, recorded_sha = match.digest, match.recorded
    if not match.same and not force_vae:
        raise UserError(f"--vae {vae or loaded.vae.get('source')}: weights sha256 {vae_sha[:12]}… differ from the VAE "
                        f"MODEL was trained on ({recorded_sha[:12]}…, {loaded.vae.get('source')}); pass that VAE, "
                        f"or --force-vae to decode with this one anyway")
    channels = int(loaded.arch.get("in_channels", 0))
    if opened.config.latent_channels != channels:
        raise UserError(f"--vae {vae or loaded.vae.get('source')}: {opened.config.latent_channels}-channel latents, "
                        f"MODEL {model_path} samples {channels}-channel latents")

    if given_stats is not None:
        mean, std = given_stats
        stats_source = str(latent_stats)
    elif loaded.latent_mean is not None and meta.get("latent_stats_source", "").startswith("assumed") \
            and opened.has_latent_stats:
        mean, std, stats_source = opened.latent_mean, opened.latent_std, "beside the VAE weights"
    elif loaded.latent_mean is not None:
        mean, std = loaded.latent_mean, loaded.latent_std
        stats_source = meta.get("latent_stats_source") or "export"
    elif opened.has_latent_stats:
        mean, std, stats_source = opened.latent_mean, opened.latent_std, "beside the VAE weights"
    else:
        raise UserError(f"MODEL {model_path}: no latent statistics known; pass --latent-stats FILE "
                        f"(REPA-E *-latents-stats.pt)")
    if mean.numel() != channels or std.numel() != channels:
        raise UserError(f"--latent-stats {latent_stats}: statistics for {mean.numel()} channels, MODEL has {channels}")

    size = int(loaded.arch.get("input_size", 0))
    weights_file = model_path if is_checkpoint else None
    identity = {
        "model_path": str(model_path),
        "model_generator": loaded.generator,
        "model_sha256": file_sha256(weights_file) if weights_file else meta.get("weights_sha256"),
        "model_latent_stats": stats_source,
        "vae_source": str(vae or loaded.vae.get("source")),
        "vae_sha256": vae_sha,
        "vae_forced": bool(force_vae and not match.same),
    }
    return SamplingModel(model=loaded.model, num_classes=int(loaded.num_classes), latent_shape=(channels, size, size),
                     latent_mean=mean.float(), latent_std=std.float(), vae=opened.model, identity=identity)
