"""Teacher weights: the shared weight-file helpers, plus the strict load that names the teacher.

Plugin authors import from here (`read_state_dict`, `load_checked`, `strip_prefix`,
`weights_not_found`, ...); the implementations live in `sendvae_cli.weights`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sendvae_cli.weights import (  # noqa: F401 - re-exported for plugins
    NESTED_KEYS,
    WEIGHT_FILE_NAMES,
    find_weight_file,
    hf_hint,
    is_unreachable,
    key_mismatch,
    load_exactly,
    read_state_dict,
    strip_prefix,
    weights_not_found,
)


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], *, path: Path, teacher: str,
                 option: str = "--teacher-weights") -> None:
    """Strictly load teacher weights; the error names the teacher they do not fit."""
    load_exactly(module, state, path=path, option=option, what=f"does not fit teacher {teacher!r}")
