"""Generator commands: `sendvae train-sit` (SiT + REPA flow matching on a latent cache) and
`sendvae sample` (images from a trained generator) live here.

Shared options come from `sendvae_cli.cli.options`; each command checks its flags, builds the
pipeline's settings and runs it, as `cli/vae.py` does for train-vae.
"""

from __future__ import annotations
