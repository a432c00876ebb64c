"""VAEs: the LDM AutoencoderKL, its bases (sd-vae, va-vae, ...), weight formats and the export folder.

Imported lazily so that `sendvae_cli.vae.builtin` (the spec table) stays torch-free:

    from sendvae_cli.vae import open_vae, export_vae, load_exported, AutoencoderKL, VAE_CONFIGS
"""

_LAZY = {
    "AutoencoderKL": "autoencoder",
    "VAEConfig": "autoencoder",
    "VAE_CONFIGS": "autoencoder",
    "DiagonalGaussian": "autoencoder",
    "config_name": "autoencoder",
    "LoadedVAE": "formats",
    "load_weights_file": "formats",
    "load_diffusers_folder": "open",
    "export_vae": "export",
    "load_exported": "export",
    "export_diffusers": "export",
    "open_vae": "open",
    "open_path": "open",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"sendvae_cli.vae.{_LAZY[name]}"), name)
    raise AttributeError(name)
