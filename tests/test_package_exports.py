"""The packages' lazy exports name modules that exist (a renamed module must not leave a dead name)."""

import importlib

import pytest


@pytest.mark.parametrize("package", ["sendvae_cli.vae", "sendvae_cli.generators"])
def test_every_lazy_export_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
