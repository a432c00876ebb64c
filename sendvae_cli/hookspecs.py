"""The plugin contract: one hook per kind of component, each handed a `register` callable.

A plugin module implements any of these with `@hookimpl` and calls `register(spec)` once per
component. Built-in components are registered through the very same hooks.
"""

import pluggy

hookspec = pluggy.HookspecMarker("sendvae")
hookimpl = pluggy.HookimplMarker("sendvae")


@hookspec
def register_teachers(register):
    """Register frozen vision teachers: call `register(TeacherSpec(...))` for each."""


@hookspec
def register_vae_bases(register):
    """Register VAE bases (architecture + initial weights): `register(VAEBaseSpec(...))`."""


@hookspec
def register_generators(register):
    """Register generator architectures (SiT sizes and others): `register(GeneratorSpec(...))`."""


@hookspec
def register_datasets(register):
    """Register named datasets usable wherever a DATA argument is taken: `register(DatasetSpec(...))`."""


@hookspec
def register_metrics(register):
    """Register figures `sendvae fid` computes from its features: `register(MetricSpec(...))`."""

