"""What a run records of the weights it used: SHA-256 digests of files and of models' weights.

Torch-free at import: `weights_sha256` works on a module it is handed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB pieces (weights files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's weights, independent of the file they came from.

    Over the state dict in sorted key order: for each tensor its name, dtype, shape and its
    values as contiguous little-endian float32 (floating tensors) or their own dtype, so the same
    weights read from a REPA-E .pt, a diffusers folder or an export give the same digest.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        t = state[key].detach()
        t = (t.float() if t.is_floating_point() else t).cpu().contiguous()
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()
