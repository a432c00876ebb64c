"""sendvae: Send-VAE training, latent caches, SiT generators, FID and attribute probes.

This module stays light: importing it must not import torch, timm, open_clip or transformers,
so that `sendvae --help` and `sendvae plugins` answer at once. Plugin authors use:

    from sendvae_cli import hookimpl, TeacherSpec, DatasetSpec
"""

from importlib.metadata import PackageNotFoundError, version as _version

from sendvae_cli.hookspecs import hookimpl
from sendvae_cli.specs import DatasetSpec, GeneratorSpec, MetricSpec, TeacherSpec, VAEBaseSpec

try:
    __version__ = _version("sendvae")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["hookimpl", "TeacherSpec", "DatasetSpec", "VAEBaseSpec", "GeneratorSpec", "MetricSpec", "__version__"]
