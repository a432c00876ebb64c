"""Generators: the contract (FlowGenerator), SiT and LightningDiT with REPA projectors, the attention
backend, and the export folder.

Imported lazily so that `sendvae_cli.generators.builtin` (the spec table) stays torch-free:

    from sendvae_cli.generators import FlowGenerator, SiT, LightningDiT, save_generator_export, load_generator_export
"""

_LAZY = {
    "FlowGenerator": "base",
    "LightningDiT": "lightningdit",
    "SiT": "sit",
    "SIT_MODELS": "sit",
    "build_sit": "sit",
    "attend": "attention",
    "resolve_backend": "attention",
    "save_generator_export": "export",
    "load_generator_export": "export",
    "LoadedGenerator": "export",
    "import_repa_checkpoint": "export",
    "export_repa_checkpoint": "export",
    "looks_like_generator": "export",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"sendvae_cli.generators.{_LAZY[name]}"), name)
    raise AttributeError(name)
