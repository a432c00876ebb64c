"""What takes the space in a checkpoint: bytes per module and per optimizer state, for one line on screen.

A Send-VAE checkpoint holds more than the VAE: the mapper (its ViT block and projector are as
wide as the teacher, 768 channels for DINOv2-B), the discriminator, and two AdamW moments per
trained parameter, so a 0.8M-parameter VAE can still write hundreds of MB per checkpoint.
Sizes come from the safetensors header (no tensor is read) and from `state.pt` loaded with
`mmap` (tensors are sized, not copied).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

WEIGHTS = "weights.safetensors"
STATE = "state.pt"


def weights_bytes(path: Path) -> dict[str, int]:
    """{module prefix: bytes} from a safetensors file's header."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    sizes: dict[str, int] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, stop = entry["data_offsets"]
        prefix = key.split(".", 1)[0]
        sizes[prefix] = sizes.get(prefix, 0) + (stop - start)
    return sizes


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def state_bytes(path: Path) -> dict[str, int]:
    """{top-level entry of state.pt: tensor bytes} (optimizers, RNG states, ...); empty ones left out."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    sizes = {str(k): _tensor_bytes(v) for k, v in state.items()}
    return {k: v for k, v in sizes.items() if v > 0}


def checkpoint_bytes(folder: Path) -> dict[str, int]:
    """Bytes per part of a checkpoint folder: its modules, then the state entries (e.g. 'optimizer')."""
    sizes = weights_bytes(folder / WEIGHTS) if (folder / WEIGHTS).is_file() else {}
    if (folder / STATE).is_file():
        sizes.update({f"{k} (state)" if k in sizes else k: v for k, v in state_bytes(folder / STATE).items()})
    return sizes


def human(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def describe_checkpoint(folder: Path, keep: int) -> str:
    """One line: the checkpoint's size on disk, its largest parts, and how many are kept."""
    on_disk = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    parts = sorted(checkpoint_bytes(folder).items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{name} {human(size)}" for name, size in parts[:5])
    return (f"checkpoint {folder.name}: {human(on_disk)} ({shown}); the last {keep} are kept "
            f"(--keep N; a run resumes from the newest)")
