"""The SiT size table: names, depths, widths, heads and REPA's alignment depths.

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


# (depth, width, heads) from SiT/DiT; mlp ratio 4 for all. Encoder depths are REPA's published
# choices: block 8 for L and XL, block 4 for B. REPA publishes none for S; S shares B's depth of
# 12 blocks, so it gets B's 4. `tiny` exists for tests and smoke runs; `mini` is the CPU main
# job's generator (a few thousand steps in minutes on 2 cores).
SIT_SIZES: dict[str, SiTSize] = {
    "S": SiTSize(12, 384, 6, 4),
    "B": SiTSize(12, 768, 12, 4),
    "L": SiTSize(24, 1024, 16, 8),
    "XL": SiTSize(28, 1152, 16, 8),
    "tiny": SiTSize(2, 64, 2, 1),
    "mini": SiTSize(4, 128, 4, 2),
}
PATCH_SIZES = (1, 2, 4)
PROJECTOR_WIDTH = 2048  # hidden width of REPA's 3-layer projector MLP


def sit_name(size: str, patch_size: int) -> str:
    return f"SiT-{size}/{patch_size}"


def sit_sizes() -> dict[str, dict[str, int]]:
    """Every named SiT ('SiT-XL/1', ...) -> its architecture keywords (depth, width, heads,
    patch_size, encoder_depth), in table order."""
    return {
        sit_name(size, p): {"depth": s.depth, "width": s.width, "heads": s.heads, "patch_size": p,
                            "encoder_depth": s.encoder_depth}
        for size, s in SIT_SIZES.items() for p in PATCH_SIZES
    }


__all__ = ["SiTSize", "SIT_SIZES", "PATCH_SIZES", "PROJECTOR_WIDTH", "sit_name", "sit_sizes"]
