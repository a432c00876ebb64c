"""What `probe` and `recon` share: the feature sources asked for, and the images they are measured on.

A source is written on the command line as `[LABEL=]REF` after --vae, `[LABEL=]vae:REF` or
`[LABEL=]teacher:NAME` after --features (`parse_request`). Every source of one call is measured
at one resolution (`common_resolution`), on one image source whose identity (`source_identity`)
goes into every cache name made from it. This module never imports torch: the commands parse
their options before any model is built.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sendvae_cli.errors import UserError

if TYPE_CHECKING:
    from sendvae_cli.data.source import ImageSource

KINDS = ("vae", "teacher")
DEFAULT_RESOLUTION = 256


@dataclass(frozen=True)
class FeatureRequest:
    kind: str  # "vae" or "teacher"
    ref: str  # what follows the kind: a VAE reference or a teacher name
    label: str  # the name in tables, charts and JSON
    option: str  # the option it came from, for error messages


def _default_label(kind: str, ref: str) -> str:
    if kind == "teacher":
        return f"teacher:{ref}"
    path = Path(ref)
    if "/" in ref or path.exists():
        path = path.expanduser()
        # train-vae writes RUN/export: the run folder's name says more than "export".
        name = path.parent.name if path.name == "export" and path.parent.name else path.stem
        return name or ref
    return ref


def parse_request(text: str, option: str) -> FeatureRequest:
    """`[LABEL=]REF` after --vae, `[LABEL=]vae:REF` or `[LABEL=]teacher:NAME` after --features."""
    label = None
    head, sep, rest = text.partition("=")
    # A label has no path separator or kind prefix, so "runs/lr=1e-4/export" stays a path.
    if sep and head and "/" not in head and ":" not in head and rest:
        label, text = head, rest
    if option == "--vae":
        kind, ref = "vae", text
    else:
        kind, sep, ref = text.partition(":")
        if not sep or kind not in KINDS or not ref:
            raise UserError(f"--features {text}: expected teacher:NAME or vae:REF (optionally LABEL=...)")
    return FeatureRequest(kind, ref, label or _default_label(kind, ref), option)


def check_labels(requests: list[FeatureRequest]) -> None:
    seen: dict[str, FeatureRequest] = {}
    for r in requests:
        if r.label in seen:
            raise UserError(f"{r.option} {r.ref}: label {r.label!r} is used twice; name them apart with LABEL=REF")
        seen[r.label] = r


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "features"


def saved_result(path: Path, key: str) -> dict[str, Any] | None:
    """The result saved at `path` if it was computed from the inputs `key` fingerprints; None when
    it is missing, unreadable (a run killed while writing it) or made from other inputs."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return None
    return saved if saved.get("key") == key else None


def data_name(data: str) -> str:
    """`celeba`, or the file or folder name of a CSV or path: for file names and titles."""
    return Path(data).stem if data.endswith(".csv") else Path(data).name


def trained_resolution(request: FeatureRequest) -> int | None:
    """The resolution an exported VAE (or a train-vae run folder) was trained at, without building it."""
    from sendvae_cli.vae.open import recorded_resolution

    return recorded_resolution(request.ref) if request.kind == "vae" else None


def common_resolution(requests: list[FeatureRequest], given: int | None) -> int:
    """--resolution, else the one resolution the exported VAEs were trained at, else 256.

    Every source of one call is measured at one resolution: F1 figures (or PSNRs) of latents of
    different sizes would not compare.
    """
    if given is not None:
        return given
    known = {r.ref: trained_resolution(r) for r in requests}
    sizes = sorted({v for v in known.values() if v})
    if len(sizes) > 1:
        text = ", ".join(f"{ref} at {v} px" for ref, v in known.items() if v)
        raise UserError(f"--resolution: the VAEs were trained at different resolutions ({text}); pass --resolution "
                        f"to probe them all at one size")
    return sizes[0] if sizes else DEFAULT_RESOLUTION


def source_identity(source: ImageSource) -> dict[str, Any]:
    """What decides a cache's rows, once per call (row order and annotation digests cost a pass)."""
    return {
        "source": source.describe(),
        "row_order_sha256": source.row_order_sha256(),
        "attributes": hashlib.sha256("\n".join(source.attribute_names).encode()).hexdigest(),
    }
