"""CLIP teachers built with open_clip (OpenAI ViT-B/16 and ViT-L/14).

Only the vision tower is built. Its learned position embedding is resampled (bicubic) to the
token grid of each batch, so 256 px images give 16 x 16 tokens like every other teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from sendvae_cli.teachers.base import CLIP_MEAN, CLIP_STD, Teacher
from sendvae_cli.weights import (
    hf_hint,
    is_unreachable,
    load_checked,
    read_state_dict,
    strip_prefix,
    weights_not_found,
)


class OpenCLIPTeacher(Teacher):
    def __init__(self, visual: torch.nn.Module, *, name: str):
        super().__init__(
            name=name,
            width=visual.conv1.out_channels,
            patch_size=visual.conv1.kernel_size[0],
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )
        self.visual = visual

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        from timm.layers import resample_abs_pos_embed

        v = self.visual
        x = v.conv1(pixels)  # (B, D, rows, cols)
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        pos = v.positional_embedding.unsqueeze(0)  # (1, 1 + G*G, D), CLS first
        old = int(round((pos.shape[1] - 1) ** 0.5))
        if (rows, cols) != (old, old):
            pos = resample_abs_pos_embed(pos, new_size=[rows, cols], old_size=[old, old], num_prefix_tokens=1)
        cls = (v.class_embedding + pos[0, 0]).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x + pos[:, 1:]], dim=1)
        x = v.ln_pre(x)
        x = v.transformer(x)
        x = v.ln_post(x)
        return x[:, 1:]


def _vision_tower(arch_name: str, overrides: Mapping[str, Any] | None):
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    config = open_clip.get_model_config(arch_name)
    vision = dict(config["vision_cfg"], **(overrides or {}))
    embed_dim = vision.pop("output_dim", config["embed_dim"])
    return _build_vision_tower(embed_dim, CLIPVisionCfg(**vision), quick_gelu=config.get("quick_gelu", True))


def build(spec, *, weights: Path | None = None, random_weights: bool = False, arch: Mapping[str, Any] | None = None):
    arch_name, tag = spec.options["arch"], spec.options["pretrained"]
    visual = _vision_tower(arch_name, arch)
    if random_weights and weights is None:
        return OpenCLIPTeacher(visual, name=spec.name).freeze()
    if weights is None:
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg

        cfg = get_pretrained_cfg(arch_name, tag)
        try:
            weights = Path(download_pretrained(cfg))
        except Exception as error:  # noqa: BLE001
            if not is_unreachable(error):
                raise
            repo = (cfg.get("hf_hub") or "").rstrip("/") or f"open_clip {arch_name}/{tag}"
            raise weights_not_found(spec.name, f"open_clip {arch_name!r} pretrained {tag!r}", hf_hint(repo)) from None
    state = strip_prefix(read_state_dict(weights), ("visual.",))
    load_checked(visual, state, path=weights, teacher=spec.name)
    return OpenCLIPTeacher(visual, name=spec.name).freeze()
