"""The generator export folder (`generator.safetensors` + `generator.json`), and REPA / REPA-E checkpoints.

Folder layout (format "sendvae-generator", version 1), everything `sample` needs without the run:

    generator.safetensors  the model's state dict (float32; the EMA weights of a training run),
                      projectors included, so that training can continue from an export
    generator.json    {"format", "format_version", "weights", "weights_sha256", "generator"
                       (a registered name, e.g. "SiT-XL/1"), "family" ("SiT" or "LightningDiT"
                       for the built-in models, else the plugin class), "arch" (the model's
                       constructor keywords), "num_classes",
                       "latent_mean", "latent_std" (per-channel lists: the SiT sees
                       (z - mean) / std), "vae" (digest, where to find it, resolution,
                       downsample, ...), "extra" (free: steps, teachers, training settings),
                       "producer" {"name", "version"}}

Both files are byte-identical for the same weights and settings: safetensors orders its tensors
itself, generator.json has sorted keys and no timestamp. Writing is crash-safe: each file goes to a
temporary name and is renamed into place, weights first, generator.json last; it records the
weights' SHA-256, so a crash between the two renames is caught on load. Exports written before the
names were generic (`sit.safetensors` + `sit.json`, format "sendvae-sit") are read the same way;
writing into such a folder replaces them.

REPA and REPA-E save SiT checkpoints as `.pt` files holding {"model", "ema", "opt", "args",
"steps"} (REPA-E's end-to-end runs add "vae" and more); `args` is their argparse.Namespace.
`import_repa_checkpoint` reads them with `torch.load(weights_only=True)`, allowing
argparse.Namespace and nothing else beyond plain data and tensors. REPA-E's SiT carries the
latent statistics in a BatchNorm (`bn.running_mean`, `bn.running_var`); they become
latent_mean and latent_std = sqrt(running_var), what REPA-E's sampler decodes with.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sendvae_cli.errors import UserError
from sendvae_cli.io import atomic_file, save_safetensors, save_torch
from sendvae_cli.generators.sit import SiT
from sendvae_cli.generators.sizes import sit_sizes
from sendvae_cli.provenance import file_sha256
from sendvae_cli.weights import key_mismatch

FORMAT = "sendvae-generator"
FORMAT_VERSION = 1
WEIGHTS_NAME = "generator.safetensors"
INFO_NAME = "generator.json"
# What older exports are called; read like the current names, replaced when a folder is rewritten.
LEGACY = {"format": "sendvae-sit", "weights": "sit.safetensors", "info": "sit.json"}
INFO_NAMES = (INFO_NAME, LEGACY["info"])
RUN_EXPORT = "export"  # a training run folder keeps its export here
SD_VAE_SCALE = 0.18215  # REPA's fixed latent scale for SD-VAE (f8d4) latents, bias 0

BuildFn = Callable[[str, Mapping[str, Any]], nn.Module]


@dataclass
class LoadedGenerator:
    """A generator ready to sample: `model` in eval mode, and what to undo before decoding."""

    model: nn.Module
    generator: str
    arch: dict[str, Any]
    num_classes: int
    latent_mean: torch.Tensor | None  # (C,) float32
    latent_std: torch.Tensor | None  # (C,) float32
    vae: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # the whole generator.json (or its equivalent)


# -- small helpers ----------------------------------------------------------------------------
def builtin_families() -> dict[str, type]:
    """The built-in model classes by the family name an export records."""
    from sendvae_cli.generators.lightningdit import LightningDiT

    return {"SiT": SiT, "LightningDiT": LightningDiT}


def family_of(model: nn.Module) -> str:
    """"SiT" or "LightningDiT" for a built-in model, else the plugin class's qualified name."""
    for name, cls in builtin_families().items():
        if type(model) is cls:
            return name
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _stats(values, channels: int, name: str) -> list[float] | None:
    if values is None:
        return None
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() != channels:
        raise ValueError(f"{name} has {values.numel()} values, the generator has {channels} latent channels")
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} holds non-finite values")
    return [float(v) for v in values]


def _split_stats(latent_stats) -> tuple[Any, Any]:
    """(mean, std) from None, a (mean, std) pair or a mapping with "mean"/"std" (or latent_ keys)."""
    if latent_stats is None:
        return None, None
    if isinstance(latent_stats, Mapping):
        mean = latent_stats.get("mean", latent_stats.get("latent_mean"))
        std = latent_stats.get("std", latent_stats.get("latent_std"))
        return mean, std
    mean, std = latent_stats
    return mean, std


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _cpu_float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in model.state_dict().items()}


def _info_text(info: Mapping[str, Any]) -> str:
    return json.dumps(info, indent=2, sort_keys=True, allow_nan=False) + "\n"


# -- the export folder ------------------------------------------------------------------------
def save_generator_export(folder: Path, model: nn.Module, *, generator: str, latent_stats=None,
                          vae: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write `folder/generator.safetensors` + `folder/generator.json`; returns the folder.

    `model`: a SiT, or any generator with an `arch` dict (plugins); pass the EMA weights.
    `generator`: the registered name that rebuilds it (`registry.generator(name).build(**arch)`).
    `latent_stats`: per-channel (mean, std), as a pair or {"mean", "std"}; None when unknown.
    `vae`: where the latents came from (sha256, source / path hint, resolution, downsample, ...).
    """
    from sendvae_cli import __version__

    arch = getattr(model, "arch", None)
    if not isinstance(arch, Mapping):
        raise ValueError("the model has no `arch` dict: a generator must record its constructor keywords")
    channels = int(arch.get("in_channels", getattr(model, "in_channels", 0)))
    mean, std = _split_stats(latent_stats)
    mean, std = _stats(mean, channels, "latent_mean"), _stats(std, channels, "latent_std")
    if (mean is None) != (std is None):
        raise ValueError("give both latent_mean and latent_std, or neither")
    if std is not None and min(std) <= 0:
        raise ValueError("latent_std must be positive")
    info: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights": WEIGHTS_NAME,
        "weights_sha256": None,
        "generator": generator,
        "family": family_of(model),
        "arch": _jsonable(dict(arch)),
        "num_classes": int(arch.get("num_classes", getattr(model, "num_classes", 0))),
        "latent_mean": mean,
        "latent_std": std,
        "vae": _jsonable(dict(vae or {})),
        "extra": _jsonable(dict(extra or {})),
        "producer": {"name": "sendvae", "version": __version__},
    }
    state = _cpu_float_state(model)
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)

    with atomic_file(folder / WEIGHTS_NAME) as tmp:
        save_safetensors(state, tmp, metadata={"format": "pt"})
        info["weights_sha256"] = file_sha256(tmp)
    with atomic_file(folder / INFO_NAME) as tmp:
        tmp.write_text(_info_text(info))
    for stale in (LEGACY["info"], LEGACY["weights"]):  # an older export in the same folder
        (folder / stale).unlink(missing_ok=True)
    return folder


def info_file(folder: Path) -> Path | None:
    """The folder's generator.json, or the sit.json of an older export."""
    return next((Path(folder) / name for name in INFO_NAMES if (Path(folder) / name).is_file()), None)


def export_folder(path: Path) -> Path | None:
    """The export folder that `path` names: itself, its `export/` (a run folder), or its generator.json's folder."""
    path = Path(path).expanduser()
    if path.is_file() and path.name in INFO_NAMES:
        return path.parent
    for candidate in (path, path / RUN_EXPORT):
        if info_file(candidate) is not None:
            return candidate
    return None


def _read_info(folder: Path, option: str) -> dict[str, Any]:
    path = info_file(folder) or folder / INFO_NAME
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{option} {path}: not a readable {path.name} ({type(error).__name__}: {error})") from None
    if not isinstance(info, dict) or info.get("format") not in (FORMAT, LEGACY["format"]):
        raise UserError(f"{option} {path}: not a sendvae generator export (expected \"format\": \"{FORMAT}\")")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{option} {path}: format_version {version!r} is newer than this sendvae reads "
                        f"({FORMAT_VERSION}); upgrade sendvae")
    if not isinstance(info.get("arch"), dict) or not isinstance(info.get("generator"), str):
        raise UserError(f"{option} {path}: {path.name} lacks \"generator\" or \"arch\"")
    return info


def _build(info: Mapping[str, Any], build: BuildFn | None, where: Path, option: str) -> nn.Module:
    if build is not None:
        return build(info["generator"], info["arch"])
    family = info.get("family", "SiT")
    if family not in builtin_families():
        raise UserError(f"{option} {where}: generator {info['generator']!r} ({family}) comes from a plugin; "
                        "load it through the registry (pass build=)")
    try:
        return builtin_families()[family](**info["arch"])
    except (TypeError, ValueError) as error:
        raise UserError(f"{option} {where}: bad \"arch\" in its generator.json ({error})") from None


def _stat_tensor(values, channels: int, name: str, where: Path, option: str) -> torch.Tensor | None:
    if values is None:
        return None
    tensor = torch.tensor(values, dtype=torch.float32)
    if tensor.numel() != channels:
        raise UserError(f"{option} {where}: {name} has {tensor.numel()} values for {channels} latent channels")
    return tensor


def load_generator_export(path: Path, device: torch.device | str = "cpu", *, build: BuildFn | None = None,
                          option: str = "generator", verify: bool = True, **import_options: Any) -> LoadedGenerator:
    """A generator from an export folder, a run folder (its `export/`), a generator.json, or a REPA /
    REPA-E `.pt` (then `import_options` go to `import_repa_checkpoint`).

    `build(generator_name, arch) -> model` builds plugin generators (the registry's
    `generator(name).build(**arch)`); without it the built-in SiT is built from `arch`.
    """
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return import_repa_checkpoint(path, device=device, option=option, **import_options)
    folder = export_folder(path)
    if folder is None:
        what = "no such file or folder" if not path.exists() else f"holds no {INFO_NAME} (nor {RUN_EXPORT}/{INFO_NAME})"
        raise UserError(f"{option} {path}: {what}; expected a generator export, a train-sit run folder "
                        "or a REPA/REPA-E or LightningDiT .pt checkpoint")
    info = _read_info(folder, option)
    info_name = info_file(folder).name
    default_weights = LEGACY["weights"] if info_name == LEGACY["info"] else WEIGHTS_NAME
    weights = folder / str(info.get("weights") or default_weights)
    if not weights.is_file():
        raise UserError(f"{option} {folder}: {weights.name} is missing ({info_name} names it)")
    if verify and info.get("weights_sha256") and file_sha256(weights) != info["weights_sha256"]:
        raise UserError(f"{option} {weights}: does not match the SHA-256 recorded in {info_name} "
                        "(an interrupted export or a replaced file); export again")
    model = _build(info, build, folder, option)
    try:
        state = load_file(str(weights))
    except Exception as error:  # noqa: BLE001
        raise UserError(f"{option} {weights}: not a readable safetensors file ({type(error).__name__}: {error})") from None
    problem = key_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()}, state)
    if problem:
        raise UserError(f"{option} {weights}: does not fit the architecture in {info_name}: {problem}")
    model.load_state_dict(state)
    model.to(device).eval()
    channels = int(info["arch"].get("in_channels", 0))
    return LoadedGenerator(
        model=model, generator=info["generator"], arch=dict(info["arch"]), num_classes=int(info["num_classes"]),
        latent_mean=_stat_tensor(info.get("latent_mean"), channels, "latent_mean", folder, option),
        latent_std=_stat_tensor(info.get("latent_std"), channels, "latent_std", folder, option),
        vae=dict(info.get("vae") or {}), meta=info,
    )


def looks_like_generator(path: Path) -> bool:
    """True for an export folder, a run folder with `export/`, a generator.json, or a REPA/REPA-E SiT .pt."""
    path = Path(path).expanduser()
    if export_folder(path) is not None:
        return True
    if not (path.is_file() and path.suffix in (".pt", ".pth")):
        return False
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not a generator
        return False
    state = _pick_state(checkpoint, use_ema=True) if isinstance(checkpoint, dict) else None
    return isinstance(state, dict) and "x_embedder.proj.weight" in state


# -- REPA / REPA-E checkpoints ----------------------------------------------------------------
def _pick_state(checkpoint: dict, use_ema: bool) -> dict | None:
    order = ("ema", "model") if use_ema else ("model", "ema")
    for key in order:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint if "x_embedder.proj.weight" in checkpoint else None


def _args_dict(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    return {}


def _undo_legacy_split(state: dict[str, torch.Tensor], encoder_depth: int) -> dict[str, torch.Tensor]:
    """REPA's early checkpoints numbered the blocks after the aligned one `decoder_blocks.K`;
    block K there is block encoder_depth + K of the single stack."""
    out = {}
    for key, value in state.items():
        if key.startswith("decoder_blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index) + encoder_depth}.{rest}"
        out[key] = value
    return out


def _heads_for(name: str | None, width: int, heads: int | None, where: Path, option: str) -> int:
    if heads is not None:
        return int(heads)
    sizes = sit_sizes()
    key = {n.lower(): n for n in sizes}.get(str(name).lower())
    if key is not None and sizes[key]["width"] == width:
        return sizes[key]["heads"]
    for sizes_row in sizes.values():  # the REPA sizes have distinct widths
        if sizes_row["width"] == width:
            return sizes_row["heads"]
    raise UserError(f"{option} {where}: cannot tell the number of attention heads of a width-{width} SiT "
                    f"(model {name!r}); pass heads=")


def _arch_from_state(state: dict[str, torch.Tensor], args: dict[str, Any], *, where: Path, option: str,
                     heads: int | None, encoder_depth: int | None) -> dict[str, Any]:
    """Everything but heads and encoder depth is read off the tensors; those two come from args."""
    try:
        width, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
        tokens = state["pos_embed"].shape[1]
        table_rows = state["y_embedder.embedding_table.weight"].shape[0]
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as error:
        raise UserError(f"{option} {where}: not a SiT state dict (missing or odd {error})") from None
    grid = math.isqrt(tokens)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    num_classes = int(args.get("num_classes", table_rows - 1))
    has_null = table_rows - num_classes
    if has_null not in (0, 1):
        raise UserError(f"{option} {where}: the label table has {table_rows} rows for num_classes={num_classes}")
    projectors = sorted({int(k.split(".")[1]) for k in state if k.startswith("projectors.")})
    if encoder_depth is None:
        encoder_depth = int(args.get("encoder_depth", 8))
    return {
        "input_size": grid * patch, "in_channels": in_channels, "patch_size": patch, "depth": depth,
        "width": width, "heads": _heads_for(args.get("model"), width, heads, where, option),
        "mlp_ratio": hidden / width, "num_classes": num_classes,
        # The null row exists when the model was built with label dropout. REPA's train.py builds
        # with its model default 0.1 whatever --cfg-prob says, so 0 there still means a null row.
        "class_dropout": (float(args.get("cfg_prob") or 0.1)) if has_null else 0.0,
        "qk_norm": "blocks.0.attn.q_norm.weight" in state,
        "encoder_depth": encoder_depth,
        "projector_dims": [int(state[f"projectors.{i}.4.weight"].shape[0]) for i in projectors],
        "projector_width": int(state["projectors.0.0.weight"].shape[0]) if projectors else 2048,
    }


def build_and_load(cls, arch: dict[str, Any], state: dict, device, *, where: str):
    """A released checkpoint's model: `cls(**arch)` (the sizes read from its tensors), its
    tensors loaded in float32, on `device` for inference; what does not fit is one line."""
    try:
        model = cls(**arch)
    except ValueError as error:
        raise UserError(f"{where}: {error}") from None
    problem = key_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()}, state)
    if problem:
        raise UserError(f"{where}: does not fit the {cls.__name__} its tensors describe: {problem}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval()


def _load_checkpoint(pt_path: Path, option: str) -> dict:
    """A .pt file as a dict, loaded with weights_only=True (argparse.Namespace allowed: REPA's `args`)."""
    if not pt_path.is_file():
        raise UserError(f"{option} {pt_path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(pt_path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise UserError(f"{option} {pt_path}: not a checkpoint that loads with weights_only=True (tensors, plain "
                        f"data and argparse.Namespace only): {type(error).__name__}: {str(error).splitlines()[0]}") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{option} {pt_path}: expected a dict with \"ema\"/\"model\" (a REPA/REPA-E checkpoint)")
    return checkpoint


def _repa_latent_stats(latent_stats, bn: dict, channels: int, where: str):
    """(mean, std, where they came from) of a REPA checkpoint's latents: the given ones, else
    REPA-E's `bn.*` buffers, else REPA's fixed SD-VAE scale for 4 channels, else none."""
    source = None
    mean, std = _split_stats(latent_stats)
    if mean is not None:
        source = "given"
    elif "bn.running_mean" in bn and "bn.running_var" in bn:
        mean, std = bn["bn.running_mean"].float(), bn["bn.running_var"].float().sqrt()
        source = "REPA-E bn.running_mean / sqrt(bn.running_var)"
    elif channels == 4:
        mean, std = torch.zeros(4), torch.full((4,), 1 / SD_VAE_SCALE)
        source = "assumed: REPA's SD-VAE scale 0.18215, bias 0"
    mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).flatten()
    std = None if std is None else torch.as_tensor(std, dtype=torch.float32).flatten()
    for name, values in (("latent_mean", mean), ("latent_std", std)):
        if values is not None and values.numel() != channels:
            raise UserError(f"{where}: {name} has {values.numel()} values for {channels} latent channels")
    return mean, std, source


def import_repa_checkpoint(pt_path: Path, *, use_ema: bool = True, device: torch.device | str = "cpu",
                           generator: str | None = None, heads: int | None = None, encoder_depth: int | None = None,
                           latent_stats=None, option: str = "generator") -> LoadedGenerator:
    """A REPA / REPA-E SiT checkpoint, or a hustvl/LightningDiT one (`lightningdit_checkpoint`), as a
    LoadedGenerator (EMA weights unless use_ema=False).

    Also reads a bare state dict (REPA's released `last.pt`), and REPA's early layout with
    `decoder_blocks.*`. Sizes are read off the tensors; heads come from the model name in
    `args` (REPA's names), the encoder depth from `args.encoder_depth`; `heads=`,
    `encoder_depth=` and `generator=` override them when `args` is missing. Latent statistics:
    REPA-E's `bn.*` buffers; else `latent_stats`; else, for 4-channel latents (REPA trains on
    SD-VAE), REPA's fixed scale: mean 0, std 1 / 0.18215; else none.
    """
    pt_path = Path(pt_path).expanduser()
    checkpoint = _load_checkpoint(pt_path, option)
    state = _pick_state(checkpoint, use_ema)
    if state is None:
        raise UserError(f"{option} {pt_path}: holds no \"ema\" or \"model\" SiT state dict")
    from sendvae_cli.generators.lightningdit_checkpoint import import_lightningdit_state, is_lightningdit_state

    if is_lightningdit_state(state):
        return import_lightningdit_state(state, checkpoint, path=pt_path, use_ema=use_ema, device=device,
                                         generator=generator, latent_stats=latent_stats, option=option)
    args = _args_dict(checkpoint.get("args"))
    depth_for_legacy = encoder_depth if encoder_depth is not None else int(args.get("encoder_depth", 8))
    state = _undo_legacy_split(dict(state), depth_for_legacy)
    bn = {k: state.pop(k) for k in [k for k in state if k.startswith("bn.")]}
    arch = _arch_from_state(state, args, where=pt_path, option=option, heads=heads, encoder_depth=encoder_depth)

    mean, std, stats_source = _repa_latent_stats(latent_stats, bn, arch["in_channels"], f"{option} {pt_path}")

    model = build_and_load(SiT, arch, state, device, where=f"{option} {pt_path}")

    name = generator or str(args.get("model") or f"SiT-{arch['width']}/{arch['patch_size']}")
    vae = {"source": args.get("vae_ckpt") or ("stabilityai/sd-vae-ft-mse" if arch["in_channels"] == 4 else None),
           "name": args.get("vae"), "resolution": args.get("resolution"), "vae_in_checkpoint": "vae" in checkpoint}
    meta = {
        "format": "repa-checkpoint", "path": str(pt_path), "weights": "ema" if use_ema and "ema" in checkpoint else "model",
        "generator": name, "family": "SiT", "arch": arch, "num_classes": arch["num_classes"],
        "latent_stats_source": stats_source, "steps": checkpoint.get("steps"), "args": _jsonable(args),
        "flavour": "repa-e" if bn else "repa",
    }
    return LoadedGenerator(model=model, generator=name, arch=arch, num_classes=arch["num_classes"],
                           latent_mean=mean, latent_std=std, vae=vae, meta=meta)


def export_repa_checkpoint(model: SiT | LoadedGenerator, pt_path: Path, *, flavour: str = "repa-e",
                           latent_stats=None, generator: str | None = None, args: Mapping[str, Any] | None = None,
                           steps: int = 0) -> Path:
    """Write a `.pt` in REPA's (flavour "repa") or REPA-E's ("repa-e") checkpoint layout.

    The file holds {"model", "ema" (both these weights), "opt": {}, "args" (a plain dict, so it
    loads with weights_only=True anywhere), "steps"}. REPA-E's SiT also holds the latent
    statistics in `bn.*`, so flavour "repa-e" needs them (from the LoadedGenerator or
    `latent_stats`). Their sampling scripts take the architecture from their own command line
    (REPA) or an args.json (REPA-E); `args` here records it for the reader.
    """
    if flavour not in ("repa", "repa-e"):
        raise ValueError(f"flavour {flavour!r}: expected 'repa' or 'repa-e'")
    if isinstance(model, LoadedGenerator):
        if latent_stats is None and model.latent_mean is not None:
            latent_stats = (model.latent_mean, model.latent_std)
        generator = generator or model.generator
        model = model.model
    if not isinstance(model, SiT):
        raise ValueError("only the built-in SiT has REPA's layout")
    state = _cpu_float_state(model)
    if flavour == "repa-e":
        mean, std = _split_stats(latent_stats)
        if mean is None or std is None:
            raise ValueError("REPA-E's layout holds the latent statistics (bn.*): give latent_stats")
        channels = model.in_channels
        state["bn.running_mean"] = torch.tensor(_stats(mean, channels, "latent_mean"), dtype=torch.float32)
        state["bn.running_var"] = torch.tensor(_stats(std, channels, "latent_std"), dtype=torch.float32).pow(2)
        state["bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    arch = model.arch
    record = {"model": generator or f"SiT-{arch['width']}/{arch['patch_size']}", "num_classes": arch["num_classes"],
              "encoder_depth": arch["encoder_depth"], "qk_norm": arch["qk_norm"], "cfg_prob": arch["class_dropout"],
              "projector_dims": list(arch["projector_dims"]), **dict(args or {})}
    pt_path = Path(pt_path).expanduser()
    pt_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"model": state, "ema": state, "opt": {}, "args": _jsonable(record), "steps": int(steps)}
    with atomic_file(pt_path) as tmp:
        save_torch(checkpoint, tmp)
    return pt_path


__all__ = ["FORMAT", "FORMAT_VERSION", "WEIGHTS_NAME", "INFO_NAME", "LoadedGenerator", "save_generator_export", "info_file",
           "load_generator_export", "export_folder", "looks_like_generator", "import_repa_checkpoint",
           "export_repa_checkpoint"]
