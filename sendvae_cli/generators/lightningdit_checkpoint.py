"""hustvl/LightningDiT checkpoints: the `.pt` files their train.py writes, as a LoadedGenerator.

Their train.py saves {"model", "ema", "opt", "config"} (`config`: the YAML as a dict); the released
`lightningdit-xl-imagenet256-800ep.pt` holds {"ema"}; a bare state dict is read too. The module
names are those of `generators.lightningdit` (made to match), so the weights load unchanged; the
time convention is converted by the model itself (see that module). Sizes and switches are read
off the tensors: SwiGLU from `mlp.w12`, RMSNorm from `norm1.weight`, QK-norm from
`attn.q_norm.weight`, RoPE from `feat_rope.*` (whose table width is the head width), wo_shift
from the width of `adaLN_modulation`. The checkpoint holds no latent statistics: `sample` takes
VA-VAE's `latents_stats.pt` from `--latent-stats` or from beside the VAE's weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from sendvae_cli.errors import UserError
from sendvae_cli.generators.sizes import LIGHTNINGDIT_SIZES


def is_lightningdit_state(state: dict) -> bool:
    """True for a LightningDiT state dict (SwiGLU, RMSNorm or rotary tables: none of which SiT has)."""
    return any(key in state for key in ("blocks.0.mlp.w12.weight", "blocks.0.norm1.weight", "feat_rope.freqs_cos"))


def _heads(state: dict, width: int, where: Path, option: str) -> int:
    if "feat_rope.freqs_cos" in state:
        return width // int(state["feat_rope.freqs_cos"].shape[-1])
    for size in LIGHTNINGDIT_SIZES.values():  # their sizes have distinct widths
        if size.width == width:
            return size.heads
    raise UserError(f"{option} {where}: cannot tell the attention heads of a width-{width} LightningDiT "
                    f"without rotary tables")


def _mlp_ratio(state: dict, width: int, where: Path, option: str) -> float:
    if "blocks.0.mlp.w12.weight" not in state:
        return state["blocks.0.mlp.fc1.weight"].shape[0] / width
    hidden = state["blocks.0.mlp.w12.weight"].shape[0] // 2  # SwiGLU's width is int(2/3 * ratio * width)
    for ratio in (4.0, 3.0, 2.0, 8.0, 6.0):
        if int(2 / 3 * int(width * ratio)) == hidden:
            return ratio
    raise UserError(f"{option} {where}: a SwiGLU hidden width of {hidden} matches no MLP ratio for width {width}")


def lightningdit_arch(state: dict, *, where: Path, option: str) -> dict[str, Any]:
    """The `LightningDiT` constructor keywords that fit a state dict."""
    try:
        width, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
        grid = math.isqrt(state["pos_embed"].shape[1])
        table_rows = state["y_embedder.embedding_table.weight"].shape[0]
        modulation = state["blocks.0.adaLN_modulation.1.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as error:
        raise UserError(f"{option} {where}: not a LightningDiT state dict (missing or odd {error})") from None
    if "y_embedder.embedding_table.weight" in state and table_rows < 2:
        raise UserError(f"{option} {where}: the label table has {table_rows} rows")
    projectors = sorted({int(k.split(".")[1]) for k in state if k.startswith("projectors.")})
    return {
        "input_size": grid * patch, "in_channels": in_channels, "patch_size": patch,
        "depth": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        "width": width, "heads": _heads(state, width, where, option),
        "mlp_ratio": _mlp_ratio(state, width, where, option),
        # Their label table always has the null row (class_dropout_prob 0.1 at training).
        "num_classes": table_rows - 1, "class_dropout": 0.1,
        "qk_norm": "blocks.0.attn.q_norm.weight" in state, "swiglu": "blocks.0.mlp.w12.weight" in state,
        "rope": "feat_rope.freqs_cos" in state, "rmsnorm": "blocks.0.norm1.weight" in state,
        "wo_shift": modulation == 4 * width,
        "encoder_depth": 8 if projectors else 1,
        "projector_dims": [int(state[f"projectors.{i}.4.weight"].shape[0]) for i in projectors],
        "projector_width": int(state["projectors.0.0.weight"].shape[0]) if projectors else 2048,
    }


def import_lightningdit_state(state: dict, checkpoint: dict, *, path: Path, use_ema: bool, device, generator,
                              latent_stats, option: str):
    """A LoadedGenerator from a LightningDiT state dict taken out of `checkpoint` (read from `path`)."""
    from sendvae_cli.generators.export import LoadedGenerator, _split_stats, build_and_load
    from sendvae_cli.generators.lightningdit import LightningDiT

    state = {k.removeprefix("module."): v for k, v in state.items()}
    arch = lightningdit_arch(state, where=path, option=option)
    model = build_and_load(LightningDiT, arch, state, device, where=f"{option} {path}")

    mean, std = _split_stats(latent_stats)
    mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).flatten()
    std = None if std is None else torch.as_tensor(std, dtype=torch.float32).flatten()
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    name = generator or str((config.get("model") or {}).get("model_type")
                            or f"LightningDiT-{arch['width']}/{arch['patch_size']}")
    vae_name = (config.get("vae") or {}).get("model_name")
    meta = {
        "format": "lightningdit-checkpoint", "path": str(path),
        "weights": "ema" if use_ema and "ema" in checkpoint else ("model" if "model" in checkpoint else "state dict"),
        "generator": name, "family": "LightningDiT", "arch": arch, "num_classes": arch["num_classes"],
        "latent_stats_source": "given" if mean is not None else "", "flavour": "lightningdit",
    }
    return LoadedGenerator(model=model, generator=name, arch=arch, num_classes=arch["num_classes"],
                           latent_mean=mean, latent_std=std, vae={"name": vae_name, "source": None}, meta=meta)


__all__ = ["is_lightningdit_state", "lightningdit_arch", "import_lightningdit_state"]
