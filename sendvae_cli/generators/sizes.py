"""The size tables of the built-in generators (SiT, LightningDiT): depths, widths, heads and REPA's
alignment depths.

Kept free of torch so that the built-in generator plugin can list every size without importing
the model. `sit.py` builds its constructor table `SIT_MODELS` from the same rows.
"""

from __future__ import annotations

from typing import NamedTuple


class SiTSize(NamedTuple):
    depth: int
    width: int
    heads: int
    encoder_depth: int  # the block whose output tokens REPA aligns (1-based)
    projector_width: int = 2048  # hidden width of REPA's 3-layer projector MLP


# (depth, width, heads) from SiT/DiT; mlp ratio 4 for all. Encoder depths are REPA's published
# choices: block 8 for L and XL, block 4 for B. REPA publishes none for S; S shares B's depth of
# 12 blocks, so it gets B's 4. `tiny` exists for tests and smoke runs; `mini` is the CPU main
# job's generator (a few thousand steps in minutes on 2 cores). Both have projectors of width 256:
# REPA's 2048 would outweigh the whole model.
SIT_SIZES: dict[str, SiTSize] = {
    "S": SiTSize(12, 384, 6, 4),
    "B": SiTSize(12, 768, 12, 4),
    "L": SiTSize(24, 1024, 16, 8),
    "XL": SiTSize(28, 1152, 16, 8),
    "tiny": SiTSize(2, 64, 2, 1, 256),
    "mini": SiTSize(4, 128, 4, 2, 256),
}
PATCH_SIZES = (1, 2, 4)
PROJECTOR_WIDTH = 2048  # hidden width of REPA's 3-layer projector MLP


def sit_name(size: str, patch_size: int) -> str:
    return f"SiT-{size}/{patch_size}"


def sit_sizes() -> dict[str, dict[str, int]]:
    """Every named SiT ('SiT-XL/1', ...) -> its architecture keywords (depth, width, heads,
    patch_size, encoder_depth, projector_width), in table order."""
    return {
        sit_name(size, p): {"depth": s.depth, "width": s.width, "heads": s.heads, "patch_size": p,
                            "encoder_depth": s.encoder_depth, "projector_width": s.projector_width}
        for size, s in SIT_SIZES.items() for p in PATCH_SIZES
    }


# LightningDiT (hustvl/LightningDiT, models/lightningdit.py): the same table shape, with their
# 1.0B size; sizes B to XL follow SiT's (depth, width, heads). hustvl publishes patches 1 and 2.
# Their models have no REPA; the encoder depths here are REPA's choices for the same depths,
# used when a run turns REPA on. `tiny` exists for tests and smoke runs.
LIGHTNINGDIT_SIZES: dict[str, SiTSize] = {
    "B": SiTSize(12, 768, 12, 4),
    "L": SiTSize(24, 1024, 16, 8),
    "XL": SiTSize(28, 1152, 16, 8),
    "1p0B": SiTSize(24, 1536, 24, 8),
    "tiny": SiTSize(2, 64, 2, 1, 256),
}
LIGHTNINGDIT_PATCH_SIZES = (1, 2)


def lightningdit_sizes() -> dict[str, dict[str, int]]:
    """Every named LightningDiT ('LightningDiT-XL/1', ...) -> its architecture keywords."""
    return {
        f"LightningDiT-{size}/{p}": {"depth": s.depth, "width": s.width, "heads": s.heads, "patch_size": p,
                                     "encoder_depth": s.encoder_depth, "projector_width": s.projector_width}
        for size, s in LIGHTNINGDIT_SIZES.items() for p in LIGHTNINGDIT_PATCH_SIZES
    }


__all__ = ["SiTSize", "SIT_SIZES", "PATCH_SIZES", "PROJECTOR_WIDTH", "LIGHTNINGDIT_SIZES", "sit_name", "sit_sizes",
           "lightningdit_sizes"]
