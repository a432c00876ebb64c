"""Teachers built with timm: DINOv2, DINOv3 and MAE vision transformers.

timm builds the architecture with `dynamic_img_size=True`, so position embeddings follow the
token grid the teacher contract asks for. Default weights come from timm's usual source (the
Hugging Face hub cache); a local file goes through timm's own checkpoint filter, so files in
the original (facebookresearch) layout load too.

Global feature (`pooled`): the CLS token of the final norm output where the family's standard
is the CLS token (DINOv2, DINOv3: what FD_DINOv2 uses), else the mean of the patch tokens (MAE).
For DINOv2 without registers, position embeddings are resampled to the token grid the way
DINOv2's own code does it (bicubic, no antialiasing, scale (grid + 0.1) / 37), not timm's way
(bicubic, antialiased, exact size), so that the CLS feature is the one the released model gives.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from sendvae_cli.teachers.base import Teacher
from sendvae_cli.weights import hf_hint, is_unreachable, load_checked, read_state_dict, weights_not_found


# DINOv2's own position-embedding interpolation offset (dinov2/models/vision_transformer.py).
DINOV2_INTERPOLATE_OFFSET = 0.1


class TimmTeacher(Teacher):
    def __init__(self, model: torch.nn.Module, *, name: str, global_feature: str = "mean",
                 pos_embed: str = "timm"):
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        patch = model.patch_embed.patch_size
        super().__init__(
            name=name,
            width=model.embed_dim,
            patch_size=patch[0] if isinstance(patch, (tuple, list)) else patch,
            mean=cfg.get("mean", (0.485, 0.456, 0.406)),
            std=cfg.get("std", (0.229, 0.224, 0.225)),
        )
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        if global_feature not in ("cls", "mean"):
            raise ValueError(f"teacher {name!r}: global feature {global_feature!r}, expected cls or mean")
        self.global_feature = global_feature
        self.pos_embed_mode = pos_embed if self._has_plain_pos_embed() else "timm"

    def _has_plain_pos_embed(self) -> bool:
        """A ViT with a CLS token, no registers, and an absolute pos embed that covers the CLS token."""
        m = self.model
        return (getattr(m, "pos_embed", None) is not None and getattr(m, "cls_token", None) is not None
                and getattr(m, "reg_token", None) is None and not getattr(m, "no_embed_class", True)
                and self.num_prefix_tokens == 1)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, prefix tokens first."""
        if self.pos_embed_mode != "dinov2":
            return self.model.forward_features(pixels)
        m = self.model
        x = m.patch_embed(pixels)  # (B, H, W, C) with dynamic_img_size
        b, h, w, c = x.shape
        pos = m.pos_embed
        grid = pos[:, 1:]
        side = int(round(math.sqrt(grid.shape[1])))
        if (h, w) != (side, side):
            grid = grid.float().reshape(1, side, side, c).permute(0, 3, 1, 2)
            scale = ((h + DINOV2_INTERPOLATE_OFFSET) / side, (w + DINOV2_INTERPOLATE_OFFSET) / side)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
            grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, h * w, c)
        x = torch.cat([m.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
        x = x + torch.cat([pos[:, :1], grid], dim=1)
        x = m.norm_pre(x)
        x = m.blocks(x)
        return m.norm(x)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixels)[:, self.num_prefix_tokens:]  # after the final norm

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.global_feature == "cls":
            return self.features(pixels)[:, 0].float()
        return self.tokens(pixels).float().mean(dim=1)


def build(spec, *, weights: Path | None = None, random_weights: bool = False, arch: Mapping[str, Any] | None = None):
    import timm

    model_name = spec.options["timm_model"]
    kwargs = {"dynamic_img_size": True, "num_classes": 0, **(arch or {})}
    if weights is not None or random_weights:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        if weights is not None:
            state = read_state_dict(weights)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
            if filter_fn is not None:
                state = filter_fn(state, model)
            load_checked(model, state, path=weights, teacher=spec.name)
    else:
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as error:  # noqa: BLE001
            if not is_unreachable(error):
                raise
            cfg = timm.models.get_pretrained_cfg(model_name)
            repo = getattr(cfg, "hf_hub_id", None) or f"timm/{model_name}"
            raise weights_not_found(spec.name, f"timm model {model_name!r}", hf_hint(repo.rstrip("/"), "model.safetensors")) from None
    return TimmTeacher(model, name=spec.name, global_feature=spec.options.get("global_feature", "mean"),
                       pos_embed=spec.options.get("pos_embed", "timm")).freeze()
