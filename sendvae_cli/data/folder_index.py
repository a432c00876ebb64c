"""The verified list of a folder's images, built once and kept beside the user's caches.

Opening every image of an ImageNet-sized folder to check it takes minutes (and far more on
network storage), so the verdict for each file is stored in a small JSON index keyed by the
folder's absolute path and reused while the file's size and modification time stay the same:
a second command on an unchanged folder lists it (one `stat` per file) and opens nothing. Files
that are new or changed since the index was written are verified, in threads, and the index is
rewritten; a deleted file simply drops out.

Where: `$SENDVAE_CACHE/folders/` (default `~/.cache/sendvae/folders/`), so read-only data
folders work; when that cannot be written the system's temporary folder is used, and when
neither can the index is simply rebuilt next time.

Under torchrun the first process of each machine (LOCAL_RANK 0) lists and verifies; the other
processes of the launch wait for it to publish the index and read that instead of listing the
folder again, so every rank sees the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sendvae_cli.errors import UserError
from sendvae_cli.io import atomic_file
from sendvae_cli.ranks import launch

FORMAT = 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}
RANK_WAIT_S = 6 * 3600.0  # how long other ranks wait for LOCAL_RANK 0 (as long as distributed's timeout)


@dataclass
class FolderIndex:
    root: Path
    paths: list[str]  # readable images, relative posix paths in row order
    skipped: list[tuple[str, str]]  # (relative path, reason) of unreadable files
    verified: int  # files this call opened to verify (0 when the stored index covered them all)
    location: Path | None  # the index file read or written, None when none could be


# --------------------------------------------------------------------------------------------
# Listing and verifying
# --------------------------------------------------------------------------------------------
def row_order(relative: str) -> list[str]:
    """Sort key of a relative path: by path components, the order `sorted(Path...)` gives."""
    return relative.split("/")


def scan(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every image file below `root` (symlinked files count,
    symlinked folders are not entered)."""
    found: dict[str, tuple[int, int]] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), prefix + entry.name + "/"))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    try:
                        if not entry.is_file():
                            continue
                        stat = entry.stat()
                    except OSError:  # a dangling link or a file removed while listing
                        continue
                    found[prefix + entry.name] = (stat.st_size, stat.st_mtime_ns)
    return found


def check_image(path: Path) -> str | None:
    """None if PIL can open and verify the file, else the reason it cannot."""
    try:
        with Image.open(path) as image:
            image.verify()
        return None
    except Exception as error:  # noqa: BLE001 - any unreadable image is reported, not raised
        return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------------------------
# Where the index lives
# --------------------------------------------------------------------------------------------
def index_dirs() -> list[Path]:
    """Where an index is looked for and written, in order of preference."""
    base = os.environ.get("SENDVAE_CACHE")
    cache = Path(base).expanduser() if base else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sendvae"
    return [cache / "folders", Path(tempfile.gettempdir()) / f"sendvae-folders-{os.getuid() if hasattr(os, 'getuid') else 0}"]


def index_name(root: Path) -> str:
    return hashlib.sha256(str(root).encode("utf-8")).hexdigest()[:24] + ".json"


def _read(path: Path, root: Path) -> dict | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT or stored.get("root") != str(root):
        return None
    return stored


def _write(path: Path, content: dict) -> bool:
    """Store an index (atomically); False when this folder cannot take it (the next one is tried)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(content, separators=(",", ":")))
            tmp.chmod(0o600)  # the index lists a user's files, and one of its folders is in the shared temp dir
        return True
    except (OSError, UserError):  # a full or read-only cache folder is not the run's error
        return False


def _stored(root: Path) -> tuple[dict | None, Path | None]:
    for folder in index_dirs():
        stored = _read(folder / index_name(root), root)
        if stored is not None:
            return stored, folder / index_name(root)
    return None, None


# --------------------------------------------------------------------------------------------
# Building, and sharing across the processes of one launch
# --------------------------------------------------------------------------------------------
def _as_index(root: Path, stored: dict, verified: int, location: Path | None) -> FolderIndex:
    files = stored["files"]
    order = sorted(files, key=row_order)
    return FolderIndex(
        root=root,
        paths=[p for p in order if files[p][2] is None],
        skipped=[(p, files[p][2]) for p in order if files[p][2] is not None],
        verified=verified,
        location=location,
    )


def build(root: Path, workers: int = 8) -> FolderIndex:
    """List `root`, verify what the stored index does not vouch for, store the result."""
    listing = scan(root)
    stored, location = _stored(root)
    known = stored["files"] if stored else {}
    files: dict[str, list] = {}
    fresh: list[str] = []
    for relative, (size, mtime) in listing.items():
        entry = known.get(relative)
        if entry is not None and entry[0] == size and entry[1] == mtime:
            files[relative] = entry
        else:
            fresh.append(relative)
    if fresh:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            reasons = list(pool.map(check_image, (root / p for p in fresh)))
        for relative, reason in zip(fresh, reasons):
            size, mtime = listing[relative]
            files[relative] = [size, mtime, reason]
    content = {"format": FORMAT, "root": str(root), "files": files}
    if fresh or len(files) != len(known) or location is None:
        location = None
        for folder in index_dirs():
            if _write(folder / index_name(root), content):
                location = folder / index_name(root)
                break
    return _as_index(root, content, len(fresh), location)


def _publish(root: Path, index: FolderIndex, token: str) -> None:
    """Tell the other processes of this launch where the current index is (None: build your own)."""
    location = str(index.location) if index.location is not None else None
    for folder in index_dirs():
        if _write(folder / (index_name(root) + ".launch"), {"launch": token, "index": location}):
            return


def _wait_for_published(root: Path, token: str, timeout_s: float) -> FolderIndex | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for folder in index_dirs():
            try:
                published = json.loads((folder / (index_name(root) + ".launch")).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(published, dict) and published.get("launch") == token:
                stored = _read(Path(published["index"]), root) if published.get("index") else None
                return _as_index(root, stored, 0, Path(published["index"])) if stored is not None else None
        time.sleep(0.2)
    return None


def index_folder(root: Path, workers: int = 8, *, rank_wait_s: float = RANK_WAIT_S) -> FolderIndex:
    """The verified images of `root` (an absolute, existing folder), from the stored index where it holds."""
    place = launch()
    token = place.token
    if token is not None and place.local_rank != 0:
        shared = _wait_for_published(root, token, rank_wait_s)
        if shared is not None:
            return shared
    index = build(root, workers)
    if token is not None:
        _publish(root, index, token)
    return index
