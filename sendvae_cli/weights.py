"""The one door for weight files: finding them (a given path, the torch hub cache, an installed
package, a download: `resolve_file`), whether they are on this machine (`local_weights`, for
`sendvae plugins`), reading them safely, loading them strictly, and saying in one line why
pretrained weights are missing.

Shared by teachers (and teacher plugins), the VAE, LPIPS, the discriminator and Inception. The
module imports no torch: `sendvae plugins` asks it where files are without loading a model, so
torch is imported inside the functions that read or download tensors. What a file's or a
model's SHA-256 is (the provenance runs record) is `sendvae_cli.provenance`.

Files are safetensors or plain tensor pickles read with `torch.load(weights_only=True)`;
nothing else is ever unpickled. A folder is searched for the usual weight file names.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from sendvae_cli.errors import UserError, WeightsNotFound

if TYPE_CHECKING:
    import torch
    from torch import nn

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
    """torch's download cache (TORCH_HOME/hub/checkpoints), where torchvision keeps weights too.

    Asked of torch.hub once torch is loaded (it may have been moved with `torch.hub.set_dir`),
    else read from the environment as torch reads it, so that asking imports nothing."""
    hub = sys.modules.get("torch.hub")
    if hub is not None:
        return Path(hub.get_dir()) / "checkpoints"
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def hub_cache() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def hub_repo_cached(repo_id: str) -> bool:
    """True when the hub cache holds a snapshot of `repo_id` with at least one file."""
    snapshots = hub_cache() / ("models--" + repo_id.strip("/").replace("/", "--")) / "snapshots"
    try:
        return any(any(snapshot.iterdir()) for snapshot in snapshots.iterdir() if snapshot.is_dir())
    except OSError:
        return False


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
    import torch.hub

    target = hub_checkpoints() / file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=hash_prefix, progress=False)
    except Exception as error:  # noqa: BLE001 - 'no network' is reported as missing weights
        if not is_unreachable(error):
            raise
        return None
    return target


@dataclass(frozen=True)
class WeightFile:
    """One released weight file and where it is looked for (see `resolve_file`)."""

    name: str  # its file name: in the hub cache, in a given folder, in the package
    option: str  # the command-line option that gives it, named in errors
    url: str | Callable[[], str] | None = None  # downloaded into the hub cache from here; None: never
    hash_prefix: str | None = None  # a download's SHA-256 must start with this
    package: tuple[str, str] | None = None  # (import name, path inside) of a package that ships it
    package_first: bool = False  # the package's copy is preferred to the hub cache's


def resolve_file(file: WeightFile, given: Path | str | None = None, *,
                 missing: Callable[[], Exception] | None = None) -> Path | None:
    """The path of `file`, looked up in this order (first hit wins):

    the `given` path (a file, or a folder holding `file.name`; anything else is one error line)
    -> the torch hub cache -> the installed package that ships it (the two swapped with
    `package_first`) -> a download into the hub cache (unless HF_HUB_OFFLINE=1 or no `url`)
    -> `missing()` raised, or None without it (the caller's one line names what to fetch).
    """
    if given is not None:
        return given_file(given, file.name, file.option)
    places = [lambda: _cached(file.name), lambda: packaged_file(*file.package) if file.package else None]
    for place in reversed(places) if file.package_first else places:
        found = place()
        if found is not None:
            return found
    if file.url is not None:
        downloaded = download(file.url() if callable(file.url) else file.url, file.name, hash_prefix=file.hash_prefix)
        if downloaded is not None:
            return downloaded
    if missing is not None:
        raise missing()
    return None


def _cached(name: str) -> Path | None:
    path = hub_checkpoints() / name
    return path if path.is_file() else None


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
    import torch

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


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], *, path: Path, teacher: str,
                 option: str = "--teacher-weights") -> None:
    """Strictly load teacher weights; the error names the teacher they do not fit."""
    load_exactly(module, state, path=path, option=option, what=f"does not fit teacher {teacher!r}")


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


#################################################################################
#                 Are a component's weights on this machine?                    #
#################################################################################

# What `local_weights` answers: found, missing, nothing to fetch, cannot tell from here.
YES, NO, NOT_NEEDED, UNKNOWN = "yes", "no", "-", "?"


def local_weights(spec) -> str:
    """YES / NO / NOT_NEEDED / UNKNOWN for a teacher or VAE base spec, from the caches' folders
    alone (nothing is imported or downloaded), so `sendvae plugins` shows what runs offline.

    - Hugging Face repos (timm models `timm/<model>`, transformers ids, `hf:` VAE repos,
      open_clip's `hf_hub` option): a snapshot in the hub cache (`hub_cache`);
    - torchvision-style files (`weights_file` option): where `resolve_file` looks, short of a
      download: torch's hub checkpoints folder, or an installed package that ships the file
      (`package` option: import name, path inside it);
    - a spec with `needs_weights=False` needs nothing.
    """
    if not spec.needs_weights:
        return NOT_NEEDED
    source = str(spec.source or "")
    options = spec.options or {}
    if options.get("weights_file"):
        file = WeightFile(options["weights_file"], "--teacher-weights", package=_package(options.get("package")))
        return YES if resolve_file(file) is not None else NO
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


def _package(package: Any) -> tuple[str, str] | None:
    """A spec's `package` option (import name, path inside, pip name) as (import name, path), or
    None when it is missing or malformed."""
    try:
        return (str(package[0]), str(package[1])) if package else None
    except (IndexError, TypeError, KeyError):
        return None
