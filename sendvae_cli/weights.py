"""The one door for weight files: finding them (a given path, the torch hub cache, an installed
package), downloading them (with a hash prefix), reading them safely, loading them strictly,
and saying in one line why pretrained weights are missing.

Shared by teachers (and teacher plugins), the VAE, LPIPS, the discriminator and Inception.

Files are safetensors or plain tensor pickles read with `torch.load(weights_only=True)`;
nothing else is ever unpickled. A folder is searched for the usual weight file names.
"""

from __future__ import annotations

import errno
import importlib.util
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from sendvae_cli.errors import UserError, WeightsNotFound

WEIGHT_FILE_NAMES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "model.pth",
    "model.pt",
)
NESTED_KEYS = ("state_dict", "model", "teacher", "module")


#################################################################################
#                       Where weight files are found                            #
#################################################################################


def hub_checkpoints() -> Path:
    """torch's download cache (TORCH_HOME/hub/checkpoints), where torchvision keeps weights too."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline() -> bool:
    """HF_HUB_OFFLINE set: nothing is downloaded, a missing file is reported at once."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def packaged_file(package: str, relative_path: str) -> Path | None:
    """A file inside an installed package, found without importing the package."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (found.submodule_search_locations or []) if found else []:
        path = Path(folder) / relative_path
        if path.is_file():
            return path
    return None


def given_file(given: Path | str, file_name: str, option: str) -> Path:
    """A user-given file, or a folder holding `file_name`; else one line naming both."""
    path = Path(given).expanduser()
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise UserError(f"{option} {given}: no such file (expected {file_name} or a folder holding it)")
    return path


def download(url: str, file_name: str, hash_prefix: str | None = None) -> Path | None:
    """Fetch `url` into the torch hub cache as `file_name`; None when offline or unreachable.

    Any other failure (a full disk, a folder without write permission, a file whose SHA-256
    does not start with `hash_prefix`) is raised as it is: it is not "weights not found".
    """
    if offline():
        return None
    target = hub_checkpoints() / file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=hash_prefix, progress=False)
    except Exception as error:  # noqa: BLE001 - 'no network' is reported as missing weights
        if not is_unreachable(error):
            raise
        return None
    return target


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB pieces (weights files are gigabytes)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights, independent of the file they came from.

    Over the state dict in sorted key order: for each tensor its name, dtype, shape and its
    values as contiguous little-endian float32 (floating tensors) or their own dtype, so the same
    weights read from a REPA-E .pt, a diffusers folder or an export give the same digest.
    """
    import hashlib

    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        t = state[key].detach()
        t = (t.float() if t.is_floating_point() else t).cpu().contiguous()
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def find_weight_file(path: Path, option: str = "--teacher-weights") -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{option} {path}: folder holds none of {', '.join(WEIGHT_FILE_NAMES)}")
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    return path


def read_state_dict(path: Path, option: str = "--teacher-weights") -> dict[str, torch.Tensor]:
    """Tensors of a weights file, unwrapped from the usual {'model': ...} containers."""
    path = find_weight_file(path, option)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user-facing problem
        raise UserError(f"{option} {path}: not a readable weights file ({type(error).__name__}: {error})") from None
    for key in NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{option} {path}: expected a dictionary of tensors (a state dict)")
    return state


def strip_prefix(state: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Keep the keys under the first prefix present (e.g. 'visual.' of a whole CLIP)."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def key_mismatch(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor]) -> str | None:
    """None if `state` has exactly the expected keys and shapes, else what differs, in words."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k])})")
    return "keys " + "; ".join(parts)


def load_exactly(module: nn.Module, state: dict[str, torch.Tensor], *, path: Path, option: str, what: str) -> None:
    """load_state_dict(strict) with a one-line error: "{option} {path}: {what}: keys ...".

    `what` completes the sentence, e.g. "does not fit teacher 'mae-b'" or "is not the VGG16
    features", and the keys part says how many are missing, unexpected or of another shape.
    """
    problem = key_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()}, state)
    if problem:
        raise UserError(f"{option} {path}: {what}: {problem}")
    module.load_state_dict(state, strict=True)


# OSErrors about this machine's disk and permissions: never "not cached and no network".
LOCAL_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def is_unreachable(error: BaseException) -> bool:
    """True when an exception chain says 'not cached and no network', not a real bug."""
    names = {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "EntryNotFoundError",
        "RepositoryNotFoundError",
        "GatedRepoError",
        "HfHubHTTPError",
        "ConnectionError",
        "URLError",
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "FileNotFoundError",
        "OSError",
        "HTTPError",
    }
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in LOCAL_ERRNOS:
            return False  # the disk or the permissions, not the network
        if any(cls.__name__ in names for cls in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
    return False


def weights_not_found(teacher: str, where: str, fetch_hint: str) -> WeightsNotFound:
    return WeightsNotFound(
        f"teacher {teacher!r}: pretrained weights not found: {where}. {fetch_hint} "
        f"Or pass --teacher-weights PATH (a .safetensors/.pth state dict), or --random-weights for a smoke run."
    )


def hf_hint(repo_id: str, filename: str | None = None) -> str:
    what = f"{repo_id} ({filename})" if filename else repo_id
    return (
        f"It is looked up in the Hugging Face cache (HF_HOME, default ~/.cache/huggingface) as {what}; "
        f"on a machine with network run `hf download {repo_id}` and copy the cache here."
    )
