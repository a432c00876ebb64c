"""Teachers built with timm: DINOv2, DINOv3 and MAE vision transformers.

timm builds the architecture with `dynamic_img_size=True`, so position embeddings follow the
token grid the teacher contract asks for. Default weights come from timm's usual source (the
Hugging Face hub cache); a local file goes through timm's own checkpoint filter, so files in
the original (facebookresearch) layout load too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from sendvae_cli.teachers.base import Teacher
from sendvae_cli.teachers.weights import hf_hint, is_unreachable, load_checked, read_state_dict, weights_not_found


class TimmTeacher(Teacher):
    def __init__(self, model: torch.nn.Module, *, name: str):
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

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(pixels)  # after the final norm
        return features[:, self.num_prefix_tokens:]


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
    return TimmTeacher(model, name=spec.name).freeze()
