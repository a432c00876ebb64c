"""Teachers built with transformers: SigLIP and I-JEPA vision encoders.

Both have no prefix tokens (SigLIP pools with an attention head, I-JEPA has no CLS), and both
interpolate their position embeddings to the requested grid. The architecture sizes live in
the spec, so a local weights file loads with no network; a local folder with config.json
loads through `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from sendvae_cli.teachers.base import Teacher
from sendvae_cli.weights import hf_hint, is_unreachable, load_checked, read_state_dict, weights_not_found

# family -> (config class, model class, key prefix of the vision weights inside a bigger model)
_CLASSES = {
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel", "vision_model."),
    "ijepa": ("IJepaConfig", "IJepaModel", None),
}


class HFTeacher(Teacher):
    def __init__(self, model: torch.nn.Module, *, name: str, mean, std):
        config = model.config
        super().__init__(name=name, width=config.hidden_size, patch_size=config.patch_size, mean=mean, std=std)
        self.model = model

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels, interpolate_pos_encoding=True)
        return out.last_hidden_state


def _classes(family: str):
    import transformers

    config_name, model_name, prefix = _CLASSES[family]
    return getattr(transformers, config_name), getattr(transformers, model_name), prefix


def build(spec, *, weights: Path | None = None, random_weights: bool = False, arch: Mapping[str, Any] | None = None):
    config_cls, model_cls, prefix = _classes(spec.options["hf_family"])
    mean, std = spec.options["mean"], spec.options["std"]
    hub_id = spec.options["hf_id"]
    if weights is not None and Path(weights).is_dir() and (Path(weights) / "config.json").is_file():
        model = model_cls.from_pretrained(str(weights))
    elif weights is not None or random_weights:
        config = config_cls(**dict(spec.options["config"], **(arch or {})))
        model = model_cls(config)
        if weights is not None:
            state = read_state_dict(weights)
            # A whole SigLIP (vision + text) file: keep the vision tower only.
            if prefix and any(k.startswith("text_model.") for k in state):
                state = {k: v for k, v in state.items() if k.startswith(prefix)}
            load_checked(model, state, path=weights, teacher=spec.name)
    else:
        try:
            model = model_cls.from_pretrained(hub_id)
        except Exception as error:  # noqa: BLE001
            if not is_unreachable(error):
                raise
            raise weights_not_found(spec.name, f"transformers model {hub_id!r}", hf_hint(hub_id)) from None
    return HFTeacher(model, name=spec.name, mean=mean, std=std).freeze()
