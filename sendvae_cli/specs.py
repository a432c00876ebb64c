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
    """A generator architecture (SiT-XL/1, ...) built on cached latents."""

    name: str
    description: str
    factory: Factory
    depth: int = 0
    width: int = 0
    heads: int = 0
    patch_size: int = 1
    aliases: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self, **options):
        return resolve_factory(self.factory)(self, **options)
