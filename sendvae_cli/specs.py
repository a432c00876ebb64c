"""Light descriptions of components: what `sendvae plugins` lists and what lookups return.

A spec holds facts (name, width, licence, ...) and a factory. The factory is a callable or a
"module:attribute" string, imported only when the component is built, so registering and
listing plugins never imports torch or a model library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

Factory = Callable[..., Any] | str


def resolve_factory(factory: Factory) -> Callable[..., Any]:
    """Turn a "package.module:attribute" string into the callable it names."""
    if callable(factory):
        return factory
    module_name, _, attribute = factory.partition(":")
    if not attribute:
        raise ValueError(f"factory {factory!r} is not of the form 'module:attribute'")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class TeacherSpec:
    """A frozen vision model that turns images into patch tokens.

    `factory(spec, weights=PATH|None, random_weights=bool, arch=dict|None)` returns a
    `sendvae_cli.teachers.Teacher`. `arch` overrides architecture sizes (tests use `tiny`).
    """

    name: str
    family: str
    width: int
    patch_size: int
    factory: Factory
    source: str = ""  # where the default weights come from, as a user would look them up
    licence: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    tiny: Mapping[str, Any] = field(default_factory=dict)  # arch overrides for a tiny test model

    def build(self, *, weights=None, random_weights: bool = False, arch: Mapping[str, Any] | None = None):
        return resolve_factory(self.factory)(self, weights=weights, random_weights=random_weights, arch=arch)


@dataclass(frozen=True)
class DatasetSpec:
    """A named image dataset. `factory(spec, **options)` returns an image source."""

    name: str
    description: str
    factory: Factory
    num_classes: int | None = None
    attributes: tuple[str, ...] = ()  # binary attribute columns, for probes
    needs_root: bool = False  # True when the data lives on disk and `--root` must point at it
    aliases: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self, **options):
        return resolve_factory(self.factory)(self, **options)


@dataclass(frozen=True)
class VAEBaseSpec:
    """A VAE architecture with its initial weights (f8d4 SD-VAE, f16d32 VA-VAE, ...)."""

    name: str
    description: str
    factory: Factory
    downsample: int = 16
    latent_channels: int = 32
    source: str = ""
    licence: str = ""
    aliases: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self, **options):
        return resolve_factory(self.factory)(self, **options)


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator architecture (SiT-XL/1, ...) trained on cached latents.

    The spec holds the size-defining facts; the latent grid (`input_size`, `in_channels`), the
    number of classes and the teachers' widths (`projector_dims`) come from the data, so
    `build(**arch)` takes them as keywords, and any field below may be overridden the same way.
    `factory(spec, **arch)` returns the model. `sample` rebuilds a trained model from the
    generator name and the `arch` dict stored in its export (`model.arch`), through this call.

    A model built here must offer `forward(x, t, y) -> v`, `forward_with_projections(x, t, y)
    -> (v, [per-teacher tokens])`, `label_drop_mask(batch, generator=...)` and the attributes
    `arch`, `num_classes`, `in_channels`, `input_size`, `patch_size` (see docs/plugins.md).
    """

    name: str
    description: str
    factory: Factory
    depth: int = 0
    width: int = 0
    heads: int = 0
    patch_size: int = 1
    family: str = "SiT"
    mlp_ratio: float = 4.0
    encoder_depth: int = 8  # the block whose tokens the REPA projectors read (1-based)
    projector_width: int = 2048
    aliases: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def architecture(self) -> dict[str, Any]:
        """The spec's own architecture keywords, the defaults that `build` starts from."""
        return {"depth": self.depth, "width": self.width, "heads": self.heads, "patch_size": self.patch_size,
                "mlp_ratio": self.mlp_ratio, "encoder_depth": self.encoder_depth,
                "projector_width": self.projector_width}

    def build(self, **arch):
        return resolve_factory(self.factory)(self, **arch)


@dataclass(frozen=True)
class MetricSpec:
    """A figure `sendvae fid` computes from the extractor's features of the samples and the
    reference. `factory()` returns a `sendvae_cli.eval.metric.Metric`."""

    name: str
    description: str
    factory: Factory
    aliases: tuple[str, ...] = ()

    def build(self):
        return resolve_factory(self.factory)()

