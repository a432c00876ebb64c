"""Atomic, full-state checkpoints: weights in safetensors, the rest in a tensors-only file.

    OUT/checkpoints/step-000100/weights.safetensors   every module, keys prefixed "vae.", "mapper.", ...
    OUT/checkpoints/step-000100/state.pt              optimizers, step, ... (torch.load weights_only)
    OUT/checkpoints/latest                            "step-000100"

A checkpoint is written into `step-XXXXXX.tmp/` and renamed when complete, then `latest` is
replaced atomically: a crash at any moment leaves the previous checkpoint as "latest", and a
full or read-only disk is one line (`sendvae_cli.io.write_errors`) with the previous checkpoint
kept. Weights go through `sendvae_cli.io.save_safetensors`, so the same training state
gives the same bytes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sendvae_cli.errors import UserError
from sendvae_cli.io import (atomic_file, fsync_file, fsync_folder, remove_stale_temporaries, save_safetensors,
                             save_torch, write_errors)

LATEST = "latest"


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a (nested) state: what a checkpoint needs on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


class Checkpoints:
    def __init__(self, folder: Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def name(self, step: int) -> str:
        return f"step-{step:06d}"

    def latest(self) -> Path | None:
        pointer = self.folder / LATEST
        if not pointer.exists():
            return None
        path = self.folder / pointer.read_text().strip()
        if not path.is_dir():
            raise UserError(f"{pointer} names {path.name}, which does not exist; delete {pointer} to resume from "
                            f"another checkpoint in {self.folder}")
        return path

    def save(self, step: int, modules: Mapping[str, nn.Module], state: Mapping[str, Any]) -> Path:
        """Write the checkpoint of `step` and point `latest` at it.

        A write error (full disk, quota, read-only) is one line naming the checkpoint and the
        space it needs; the half-written checkpoint is removed and the previous one stays "latest".
        """
        final = self.folder / self.name(step)
        tmp = self.folder / (self.name(step) + ".tmp")
        tensors = {}
        for prefix, module in modules.items():
            for key, value in unwrap(module).state_dict().items():
                tensors[f"{prefix}.{key}"] = value.detach().contiguous().cpu()
        state = dict(state, step=step)
        previous = self.folder / LATEST
        kept = (f"the last checkpoint, {previous.read_text().strip()}, is kept" if previous.is_file()
                else "no earlier checkpoint")
        with write_errors(tmp, needed=tensor_bytes(tensors) + tensor_bytes(state), kept=kept):
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                save_safetensors(tensors, tmp / "weights.safetensors")
                save_torch(state, tmp / "state.pt")
                for name in ("weights.safetensors", "state.pt"):
                    fsync_file(tmp / name)
                fsync_folder(tmp)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # frees its space; "latest" is untouched
                raise
        with atomic_file(self.folder / LATEST) as pointer:
            pointer.write_text(final.name)
        self._prune(keep_name=final.name)
        return final

    def remove_unfinished(self) -> None:
        """Delete checkpoints a killed run left half-written (`step-XXXXXX.tmp`, `.latest.tmp-*`).
        Only call it while holding the run folder's lock."""
        for tmp in self.folder.glob("step-*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
        remove_stale_temporaries(self.folder)

    def _prune(self, keep_name: str) -> None:
        steps = sorted(p for p in self.folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in steps[: max(0, len(steps) - self.keep)]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path, modules: Mapping[str, nn.Module]) -> dict[str, Any]:
        """Load weights into `modules` (strict) and return the training state."""
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path / "weights.safetensors"))
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a damaged checkpoint is a user-facing problem
            raise UserError(f"checkpoint {path} is damaged ({type(error).__name__}: {error}); "
                            f"delete it (and fix {self.folder / LATEST}) to resume from an earlier one") from None
        for prefix, module in modules.items():
            own = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            try:
                unwrap(module).load_state_dict(own, strict=True)
            except RuntimeError as error:
                first = str(error).splitlines()[0]
                raise UserError(f"checkpoint {path}: '{prefix}' weights do not fit this run ({first})") from None
        return state
