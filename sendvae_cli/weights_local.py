"""Are a component's pretrained weights on this machine? Answered from the caches' folders alone.

`sendvae plugins` shows it per teacher and VAE base, so a user on an offline machine sees what
runs before trying. Nothing heavy is imported and nothing is downloaded: the answer comes from
where the loaders look.

- Hugging Face repos (timm models `timm/<model>`, transformers ids, `hf:` VAE repos, open_clip's
  `hf_hub` option): a snapshot in the hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
  `~/.cache/huggingface/hub`);
- torchvision-style files (`weights_file` option): torch's hub checkpoints folder
  (`TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`), or an installed
  package that ships the file (`package` option: import name, path inside it);
- a spec with `needs_weights=False` needs nothing.

Returns "yes", "no", "-" (nothing to fetch) or "?" (this source cannot be checked).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

YES, NO, NOT_NEEDED, UNKNOWN = "yes", "no", "-", "?"


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def torch_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def hub_repo_cached(repo_id: str) -> bool:
    """True when the hub cache holds a snapshot of `repo_id` with at least one file."""
    snapshots = hub_cache() / ("models--" + repo_id.strip("/").replace("/", "--")) / "snapshots"
    try:
        return any(any(snapshot.iterdir()) for snapshot in snapshots.iterdir() if snapshot.is_dir())
    except OSError:
        return False


def _packaged(package: Any) -> bool:
    try:
        name, inner = package[0], package[1]
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError, IndexError, TypeError):
        return False
    return any((Path(folder) / inner).is_file() for folder in (found.submodule_search_locations or [])) if found else False


def local_weights(spec) -> str:
    """YES / NO / NOT_NEEDED / UNKNOWN for a teacher or VAE base spec."""
    if not spec.needs_weights:
        return NOT_NEEDED
    source = str(spec.source or "")
    options = spec.options or {}
    if options.get("weights_file"):
        if (torch_checkpoints() / options["weights_file"]).is_file() or _packaged(options.get("package")):
            return YES
        return NO
    repo = options.get("hf_hub") or options.get("hub") or options.get("hf_id")
    if not repo:
        kind, _, rest = source.partition(":")
        if kind == "timm" and rest:
            repo = f"timm/{rest}"
        elif kind in ("transformers", "hf") and rest:
            repo = rest
    if not repo:
        return UNKNOWN
    return YES if hub_repo_cached(str(repo)) else NO
