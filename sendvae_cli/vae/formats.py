"""VAE weight formats: LDM-layout files (REPA-E, LightningDiT), the diffusers layout, stats files.

Loading ends in a `LoadedVAE`: the model in LDM layout, float32, plus the per-channel latent
statistics when the source has them, plus a provenance dict. Folders (diffusers, REPA-E download
folders) and the Hugging Face hub are handled in `open.py`, on top of this module.

Formats understood (the layout is told from the keys, never from the file name):

- LDM layout (`encoder.down.0.block.0.conv1.weight`, ...): REPA-E's `sdvae-f8d4.pt`,
  `vavae-f16d32.pt`, `e2e-vavae-400k.pt` (a bare state dict), LightningDiT's
  `vavae-imagenet256-f16d32-dinov2.pt` (under 'state_dict', with `loss.*` and `linear_proj.*`
  training extras), a whole REPA-E training checkpoint (the VAE under 'vae', latent stats in the
  SiT's BatchNorm `ema['bn.running_mean'/'bn.running_var']`), or a safetensors file.
- diffusers layout (`encoder.down_blocks.0.resnets.0.conv1.weight`, ...): a folder with
  `config.json` + `diffusion_pytorch_model.safetensors`, or a bare diffusers-layout file.
- Latent statistics: REPA-E's `<stem>-latents-stats.pt` holding `latents_scale` (= 1/std) and
  `latents_bias` (= mean), shaped (1, C, 1, 1); LightningDiT's `latents_stats.pt` holding
  `mean` and `std`; diffusers `latents_mean` / `latents_std` in config.json.

Files are read with safetensors or `torch.load(weights_only=True)` (with argparse.Namespace
allowed, because REPA/REPA-E checkpoints store their `args` that way); nothing else is unpickled.
Anything a user can fix is a one-line `UserError` naming the file and what was expected.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from sendvae_cli.errors import UserError
from sendvae_cli.weights import key_mismatch
from sendvae_cli.vae.autoencoder import VAE_CONFIGS, AutoencoderKL, VAEConfig, config_name

# Top-level modules of the VAE itself; any other key in a file is a training extra.
VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# Wrappers seen around VAE state dicts (LDM `first_stage_model.`, DDP `module.`, torch.compile).
KEY_PREFIXES = ("", "first_stage_model.", "vae.", "module.", "_orig_mod.", "model.")
# Containers tried in order; the first holding a VAE wins ('vae' first: in a REPA-E training
# checkpoint 'model' and 'ema' are the SiT).
CONTAINER_KEYS = ("vae", "state_dict", "ema", "model", "module")
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
DIFFUSERS_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                          "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")


#################################################################################
#                                  The result                                   #
#################################################################################


@dataclass
class LoadedVAE:
    """A VAE ready to use, with what is known about its latents and where it came from.

    latent_mean / latent_std: per-channel statistics, float32 tensors of shape (C,), or None
    when the source does not carry them. extras: tensors of the source file that are not the
    VAE (LightningDiT's `loss.discriminator.*`, ...), for whoever wants them.
    discriminator_weights: REPA-E's `<stem>-discriminator-ckpt.pt` when it lies beside the file.
    info: the parsed vae.json of an exported folder (empty otherwise).
    """

    model: AutoencoderKL
    latent_mean: torch.Tensor | None = None
    latent_std: torch.Tensor | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    discriminator_weights: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> VAEConfig:
        return self.model.config

    @property
    def has_latent_stats(self) -> bool:
        return self.latent_mean is not None and self.latent_std is not None

    def to(self, device) -> "LoadedVAE":
        self.model.to(device)
        return self


#################################################################################
#                               Reading raw files                               #
#################################################################################


def read_tensor_file(path: Path, option: str) -> Any:
    """The object stored in a weights file: safetensors -> dict; .pt -> whatever torch saved."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user-facing problem
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(f"{option} {path}: not a readable weights file ({type(error).__name__}: {reason[:200]})") from None


def _tensors(d: Any) -> dict[str, torch.Tensor]:
    if not isinstance(d, Mapping):
        return {}
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def detect_layout(state: Mapping[str, Any]) -> str | None:
    """'ldm', 'diffusers' or None, from the key names alone."""
    keys = list(state)
    if any(k.startswith("encoder.down_blocks.") for k in keys) and any(k.startswith("decoder.up_blocks.") for k in keys):
        return "diffusers"
    if "encoder.conv_in.weight" in state and any(k.startswith("encoder.down.") for k in keys) \
            and any(k.startswith("decoder.up.") for k in keys):
        return "ldm"
    return None


def _strip(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    outside = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return inside, outside


def find_vae_state(raw: Any, path: Path, option: str):
    """(vae_state, layout, extras, latent stats from the checkpoint or None, container name)."""
    candidates: list[tuple[str, dict[str, torch.Tensor]]] = [("", _tensors(raw))]
    if isinstance(raw, Mapping):
        candidates += [(key, _tensors(raw.get(key))) for key in CONTAINER_KEYS if isinstance(raw.get(key), Mapping)]
    for container, tensors in candidates:
        for prefix in KEY_PREFIXES:
            inside, outside = _strip(tensors, prefix) if prefix else (tensors, {})
            layout = detect_layout(inside)
            if layout is None:
                continue
            state = {k: v for k, v in inside.items() if k.startswith(VAE_PREFIXES)}
            extras = {prefix + k: v for k, v in inside.items() if not k.startswith(VAE_PREFIXES)}
            extras.update(outside)
            stats = None
            if container == "vae" and isinstance(raw.get("ema"), Mapping):
                # A REPA-E training checkpoint: the SiT normalises latents with a BatchNorm whose
                # running statistics are the latent mean and variance (save_vae_weights.py).
                ema = raw["ema"]
                if isinstance(ema.get("bn.running_mean"), torch.Tensor) and isinstance(ema.get("bn.running_var"), torch.Tensor):
                    stats = (ema["bn.running_mean"].flatten().float(), ema["bn.running_var"].flatten().float().sqrt())
            return state, layout, extras, stats, container
    tensors = candidates[0][1] or next((t for _, t in candidates[1:] if t), {})
    if not tensors:
        found = f"keys {', '.join(map(str, list(raw)[:4]))}" if isinstance(raw, Mapping) else type(raw).__name__
        raise UserError(f"{option} {path}: expected a VAE state dict (tensors named encoder.*, decoder.*), found {found}")
    examples = ", ".join(list(tensors)[:3])
    raise UserError(
        f"{option} {path}: not an AutoencoderKL state dict: expected LDM keys (encoder.down.0.block.0.conv1.weight) "
        f"or diffusers keys (encoder.down_blocks.0.resnets.0.conv1.weight); found {len(tensors)} tensors such as {examples}"
    )


#################################################################################
#                         diffusers <-> LDM key conversion                      #
#################################################################################

# One table for both directions: (LDM module path, diffusers module path, leaf renames LDM ->
# diffusers). {s} is encoder or decoder, {j} an index. {i} is a level counted from full
# resolution; diffusers counts decoder blocks from the low-resolution end ({r} = levels - 1 - i).
# The mid block's resnets are 1-based in LDM ({m}) and 0-based in diffusers ({m0}). Keys no row
# matches (conv_in, conv_out, quant_conv, post_quant_conv) keep their names.
_RESNET = {"nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_LEGACY = {"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}  # diffusers < 0.14, read only
_KEY_TABLE = (
    ("{s}.norm_out", "{s}.conv_norm_out", {}),
    ("{s}.mid.block_{m}", "{s}.mid_block.resnets.{m0}", _RESNET),
    ("{s}.mid.attn_1", "{s}.mid_block.attentions.0", _ATTN),
    ("encoder.down.{i}.block.{j}", "encoder.down_blocks.{i}.resnets.{j}", _RESNET),
    ("encoder.down.{i}.attn.{j}", "encoder.down_blocks.{i}.attentions.{j}", _ATTN),
    ("encoder.down.{i}.downsample", "encoder.down_blocks.{i}.downsamplers.0", {}),
    ("decoder.up.{i}.block.{j}", "decoder.up_blocks.{r}.resnets.{j}", _RESNET),
    ("decoder.up.{i}.attn.{j}", "decoder.up_blocks.{r}.attentions.{j}", _ATTN),
    ("decoder.up.{i}.upsample", "decoder.up_blocks.{r}.upsamplers.0", {}),
)
_FIELD = {"s": "encoder|decoder", "i": r"\d+", "r": r"\d+", "j": r"\d+", "m": r"\d+", "m0": r"\d+"}


def _compile(template: str) -> re.Pattern:
    body = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m[1]}>{_FIELD[m[1]]})", re.escape(template))
    return re.compile(body + r"\.(?P<rest>.+)")


_COMPILED = [(_compile(ldm), _compile(diffusers), ldm, diffusers, leaves) for ldm, diffusers, leaves in _KEY_TABLE]


def _rename_leaf(rest: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _convert_key(key: str, levels: int, *, to_diffusers: bool) -> str:
    for ldm_re, diffusers_re, ldm, diffusers, leaves in _COMPILED:
        match = (ldm_re if to_diffusers else diffusers_re).fullmatch(key)
        if not match:
            continue
        fields = match.groupdict()
        rest = fields.pop("rest")
        if "i" in fields:
            fields["r"] = str(levels - 1 - int(fields["i"]))
        elif "r" in fields:
            fields["i"] = str(levels - 1 - int(fields["r"]))
        if "m" in fields:
            fields["m0"] = str(int(fields["m"]) - 1)
        elif "m0" in fields:
            fields["m"] = str(int(fields["m0"]) + 1)
        if to_diffusers:
            return f"{diffusers.format(**fields)}.{_rename_leaf(rest, leaves)}"
        back = {new: old for old, new in leaves.items()}
        if leaves is _ATTN:
            back.update(_ATTN_LEGACY)
        return f"{ldm.format(**fields)}.{_rename_leaf(rest, back)}"
    return key


def _is_attn_projection(ldm_key: str) -> bool:
    return re.search(r"\.(attn\.\d+|attn_1)\.(q|k|v|proj_out)\.weight$", ldm_key) is not None


def diffusers_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers AutoencoderKL state dict to LDM keys; Linear attention -> 1x1 conv."""
    levels = 1 + max((int(m[1]) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))), default=-1)
    out = {}
    for key, value in state.items():
        new = _convert_key(key, levels, to_diffusers=False)
        if _is_attn_projection(new) and value.ndim == 2:
            value = value[:, :, None, None]
        out[new] = value
    return out


def ldm_to_diffusers(state: Mapping[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Rename an LDM state dict to diffusers keys; 1x1-conv attention -> Linear."""
    out = {}
    for key, value in state.items():
        if _is_attn_projection(key) and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[_convert_key(key, levels, to_diffusers=True)] = value.contiguous()
    return out


#################################################################################
#                    Architecture from shapes / from config.json                #
#################################################################################


def _canonical(config: VAEConfig) -> VAEConfig:
    """The table config with the same architecture, else the config as inferred."""
    for known in VAE_CONFIGS.values():
        if known.architecture_key() == config.architecture_key():
            return known
    return config


def infer_config(state: Mapping[str, torch.Tensor]) -> VAEConfig:
    """The VAEConfig an LDM-layout state dict was made by. ValueError says what does not add up.

    The GroupNorm group count is not visible in shapes: a table architecture brings its own,
    anything else is assumed to use LDM's 32 groups.
    """
    def shape(key):
        if key not in state:
            raise ValueError(f"missing tensor {key}")
        return tuple(state[key].shape)

    ch, in_channels = shape("encoder.conv_in.weight")[:2]
    levels = sorted({int(m[1]) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    if not levels or levels != list(range(len(levels))):
        raise ValueError("encoder levels are not numbered 0..n-1")
    ch_mult = []
    for i in levels:
        width = shape(f"encoder.down.{i}.block.0.conv1.weight")[0]
        if width % ch:
            raise ValueError(f"level {i} width {width} is not a multiple of ch {ch}")
        ch_mult.append(width // ch)
    num_res_blocks = len({int(m[1]) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    enc_attn = [i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state]
    dec_attn = [i for i in levels if f"decoder.up.{i}.attn.0.q.weight" in state]
    z_channels = shape("decoder.conv_in.weight")[1]
    embed_dim = shape("post_quant_conv.weight")[1]
    resolution = 256
    attn = tuple(resolution // 2**i for i in enc_attn)
    dec = None if dec_attn == enc_attn else tuple(resolution // 2**i for i in dec_attn)
    widths = {ch} | {ch * m for m in ch_mult}
    common = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, attn_resolutions=attn,
                  decoder_attn_resolutions=dec, resolution=resolution, in_channels=in_channels,
                  out_channels=shape("decoder.conv_out.weight")[0], z_channels=z_channels, embed_dim=embed_dim,
                  double_z=shape("encoder.conv_out.weight")[0] == 2 * z_channels)
    probe = VAEConfig(**common, norm_groups=1)  # 1 group always divides: only the shapes are compared
    for known in VAE_CONFIGS.values():
        if probe.architecture_key() == known.architecture_key():
            return known
    if any(w % 32 for w in widths):
        raise ValueError(f"channel widths {sorted(widths)} are not multiples of 32, so the GroupNorm group count "
                         "cannot be told from the file")
    return VAEConfig(**common, norm_groups=32)


def config_from_diffusers(cfg: Mapping[str, Any]) -> VAEConfig:
    """VAEConfig from a diffusers AutoencoderKL config.json. ValueError for what we cannot run."""
    cls = cfg.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise ValueError(f"a diffusers {cls}, not an AutoencoderKL")
    if cfg.get("act_fn", "silu") not in ("silu", "swish"):
        raise ValueError(f"act_fn {cfg['act_fn']!r} is not supported (only silu)")
    for flag in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
        if not cfg.get(flag, True):
            raise ValueError(f"{flag}=false is not supported")
    boc = [int(c) for c in cfg.get("block_out_channels", (64,))]
    ch = boc[0]
    if any(c % ch for c in boc):
        raise ValueError(f"block_out_channels {boc} are not multiples of the first")
    down = list(cfg.get("down_block_types", ("DownEncoderBlock2D",) * len(boc)))
    up = list(cfg.get("up_block_types", ("UpDecoderBlock2D",) * len(boc)))
    if len(down) != len(boc) or len(up) != len(boc):
        raise ValueError("down_block_types / up_block_types do not match block_out_channels")
    allowed_down, allowed_up = {"DownEncoderBlock2D", "AttnDownEncoderBlock2D"}, {"UpDecoderBlock2D", "AttnUpDecoderBlock2D"}
    if set(down) - allowed_down or set(up) - allowed_up:
        raise ValueError(f"block types {sorted((set(down) - allowed_down) | (set(up) - allowed_up))} are not supported")
    sample = cfg.get("sample_size", 256)
    resolution = int(sample[0] if isinstance(sample, (list, tuple)) else sample)
    enc_attn = [i for i, t in enumerate(down) if t.startswith("Attn")]
    dec_attn = [len(boc) - 1 - j for j, t in enumerate(up) if t.startswith("Attn")]
    if any(resolution // 2**i < 1 for i in enc_attn + dec_attn):
        raise ValueError(f"sample_size {resolution} is too small for {len(boc)} levels")
    latent = int(cfg.get("latent_channels", 4))
    config = VAEConfig(
        ch=ch, ch_mult=tuple(c // ch for c in boc), num_res_blocks=int(cfg.get("layers_per_block", 1)),
        attn_resolutions=tuple(resolution // 2**i for i in enc_attn),
        decoder_attn_resolutions=None if sorted(dec_attn) == enc_attn else tuple(resolution // 2**i for i in sorted(dec_attn)),
        resolution=resolution, in_channels=int(cfg.get("in_channels", 3)), out_channels=int(cfg.get("out_channels", 3)),
        z_channels=latent, embed_dim=latent, double_z=True, norm_groups=int(cfg.get("norm_num_groups", 32)),
    )
    canonical = _canonical(config)
    return canonical if canonical.norm_groups == config.norm_groups else config


def diffusers_config(config: VAEConfig, latent_mean=None, latent_std=None) -> dict[str, Any]:
    """config.json for diffusers.AutoencoderKL. Raises ValueError for architectures it cannot hold.

    With per-channel statistics, scaling_factor is 1.0 and latents_mean / latents_std carry
    them (diffusers pipelines then compute (z - mean) / std exactly); without, both are null
    and scaling_factor stays 1.0 rather than SD's 0.18215, which would be silently wrong here.
    """
    if config.z_channels != config.embed_dim or not config.double_z:
        raise ValueError("diffusers AutoencoderKL needs z_channels == embed_dim and double_z")
    if config.norm_groups == 0:
        raise ValueError("diffusers AutoencoderKL always has GroupNorm; this VAE has no normalisation")
    try:
        import diffusers

        version = diffusers.__version__
    except ImportError:
        version = "0.30.0"
    levels = len(config.ch_mult)
    enc_attn, dec_attn = config.attn_levels(), config.attn_levels(decoder=True)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": version,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": ["AttnDownEncoderBlock2D" if i in enc_attn else "DownEncoderBlock2D" for i in range(levels)],
        "up_block_types": ["AttnUpDecoderBlock2D" if i in dec_attn else "UpDecoderBlock2D" for i in reversed(range(levels))],
        "block_out_channels": [config.ch * m for m in config.ch_mult],
        "layers_per_block": config.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": config.embed_dim,
        "norm_num_groups": config.norm_groups,
        "sample_size": config.resolution,
        "scaling_factor": 1.0,
        "shift_factor": None,
        "latents_mean": None if latent_mean is None else [float(v) for v in latent_mean],
        "latents_std": None if latent_std is None else [float(v) for v in latent_std],
        "force_upcast": True,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }


#################################################################################
#                                 Latent statistics                             #
#################################################################################


def read_latent_stats(path: Path, channels: int | None = None, option: str = "--vae-weights") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as float32 (C,) from a REPA-E or LightningDiT statistics file."""
    raw = read_tensor_file(path, option)
    t = _tensors(raw)
    if "latents_scale" in t and "latents_bias" in t:  # REPA-E: scale = 1/std, bias = mean
        mean, std = t["latents_bias"].flatten().float(), 1.0 / t["latents_scale"].flatten().float()
    elif "mean" in t and "std" in t:  # LightningDiT
        mean, std = t["mean"].flatten().float(), t["std"].flatten().float()
    elif "latent_mean" in t and "latent_std" in t:
        mean, std = t["latent_mean"].flatten().float(), t["latent_std"].flatten().float()
    else:
        raise UserError(f"{option} {path}: expected latent statistics (latents_scale + latents_bias, or mean + std), "
                        f"found {', '.join(list(t)[:4]) or 'no tensors'}")
    if mean.shape != std.shape or (channels is not None and mean.numel() != channels):
        raise UserError(f"{option} {path}: latent statistics for {mean.numel()} channels, the VAE has {channels}")
    if not torch.isfinite(std).all() or (std <= 0).any():
        raise UserError(f"{option} {path}: latent std must be finite and positive")
    return mean, std


def find_stats_file(weights: Path) -> Path | None:
    """REPA-E's `<stem>-latents-stats.pt` or LightningDiT's `latents_stats.pt` beside a weights file."""
    for candidate in (weights.with_name(f"{weights.stem}-latents-stats.pt"), weights.with_name("latents_stats.pt")):
        if candidate.is_file() and candidate != weights:
            return candidate
    return None


#################################################################################
#                                  Building                                     #
#################################################################################


def check_fits(config: VAEConfig, state: Mapping[str, torch.Tensor], *, path: Path, what: str, option: str) -> None:
    """One-line UserError unless `state` has exactly the tensors of AutoencoderKL(config)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in AutoencoderKL(config).state_dict().items()}
    problem = key_mismatch(expected, state)
    if problem is None:
        return
    try:
        found = f"; the file holds {infer_config(state).describe()}"
    except ValueError:
        found = ""
    raise UserError(f"{option} {path}: does not fit {what} {config.describe()}: {problem}{found}")


def build_vae(config: VAEConfig, state: Mapping[str, torch.Tensor] | None = None, *,
                copy: bool = True) -> AutoencoderKL:
    """AutoencoderKL(config) in float32, on CPU: randomly initialised, or holding `state`.

    `state` must fit (see `check_fits`). copy=False lets the model adopt the tensors themselves
    (for tensors just read from a file); the default copies, so that the model never shares
    storage with, say, another model's state_dict().
    """
    if state is None:
        return AutoencoderKL(config)
    # Build on the meta device and adopt the loaded tensors: no time spent on a random init
    # that would be overwritten (seconds for an f16d32 on a CPU).
    with torch.device("meta"):
        model = AutoencoderKL(config)
    dtype = {k: torch.float32 if v.is_floating_point() else v.dtype for k, v in state.items()}
    state = {k: v.to("cpu", dtype[k], copy=copy).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def summarise_keys(extras: Mapping[str, torch.Tensor]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in extras:
        top = key.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return counts


def load_weights_file(path: Path, *, config: VAEConfig | None = None, what: str = "the VAE",
                      option: str = "--vae-weights", stats: Path | None = None) -> LoadedVAE:
    """A `.pt` / `.safetensors` VAE in LDM or diffusers layout (sniffed), with its latent stats.

    `config` None infers the architecture from the tensor shapes. Statistics come from the
    checkpoint itself (REPA-E training checkpoints), else `stats`, else a statistics file beside it.
    """
    path = Path(path).expanduser()
    raw = read_tensor_file(path, option)
    state, layout, extras, ckpt_stats, container = find_vae_state(raw, path, option)
    del raw
    if layout == "diffusers":
        state = diffusers_to_ldm(state)
    if config is None:
        try:
            config = infer_config(state)
        except ValueError as error:
            raise UserError(f"{option} {path}: cannot tell the VAE architecture from the tensors: {error}") from None
    check_fits(config, state, path=path, what=what, option=option)
    model = build_vae(config, state, copy=False)

    mean = std = None
    stats_source = None
    if ckpt_stats is not None:
        mean, std = ckpt_stats
        stats_source = f"{path} (ema bn.running_mean / bn.running_var)"
    else:
        stats_path = Path(stats).expanduser() if stats is not None else find_stats_file(path)
        if stats_path is not None:
            mean, std = read_latent_stats(stats_path, config.latent_channels, option)
            stats_source = str(stats_path)
    if mean is not None and mean.numel() != config.latent_channels:
        mean = std = None  # a checkpoint BatchNorm of another width is not about this VAE
        stats_source = None
    disc = path.with_name(f"{path.stem}-discriminator-ckpt.pt")
    provenance = {
        "format": f"{layout}-file",
        "weights": str(path),
        "container": container or None,
        "config": config_name(config),
        "latent_stats": stats_source,
        "ignored_keys": summarise_keys(extras),
    }
    return LoadedVAE(model, mean, std, provenance, extras, disc if disc.is_file() else None)


__all__ = [
    "LoadedVAE", "read_tensor_file", "find_vae_state", "detect_layout", "diffusers_to_ldm", "ldm_to_diffusers",
    "infer_config", "config_from_diffusers", "diffusers_config", "read_latent_stats", "find_stats_file",
    "check_fits", "build_vae", "summarise_keys", "load_weights_file",
]
