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
    needs_weights: bool = True  # False: the component is usable as built (nothing to download)

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
    needs_weights: bool = True  # False: a random initialisation is the starting point (nothing to download)

    def build(self, **options):
        return resolve_factory(self.factory)(self, **options)


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator architecture (SiT-XL/1, LightningDiT-XL/1, ...) trained on cached latents.

    `factory(**keywords)` returns a `sendvae_cli.generators.base.FlowGenerator`. The keywords are
    `arch` (the spec's own architecture: sizes, REPA block, ...), completed by what the data
    decides (`input_size`, `in_channels`, `num_classes`, and `projector_dims` when REPA is on)
    and by the options a user gives explicitly (`--encoder-depth`, `--qk-norm`), which are
    refused unless `arch` declares them. `sample` rebuilds a trained model with
    `build(**model.arch)` from the name and `arch` its export records.
    """

    name: str
    description: str
    factory: Factory
    family: str = ""  # the model family ("SiT", "LightningDiT", ...), shown by `sendvae plugins`
    arch: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def build(self, **keywords):
        return resolve_factory(self.factory)(**{**self.arch, **keywords})


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
