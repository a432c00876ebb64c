"""Turn a DATA argument (a folder, a CSV file of images, or a registered dataset name) into an image source."""

from __future__ import annotations

from pathlib import Path

from sendvae_cli.data.source import ImageSource, Subset
from sendvae_cli.errors import UserError


def open_images(data: str, *, registry, resolution: int, num_images: int | None = None, seed: int = 0,
                strict: bool = False, root: str | None = None) -> ImageSource:
    if resolution <= 0 or resolution % 16:
        raise UserError(f"--resolution {resolution}: expected a positive multiple of 16 (e.g. 256)")
    if num_images is not None and num_images <= 0:
        raise UserError(f"--num-images {num_images}: expected a positive number")
    path = Path(data).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        # A CSV of images and attributes is the `csv` dataset with the file as its root.
        source: ImageSource = registry.dataset("csv").build(
            resolution=resolution, num_images=num_images, seed=seed, root=str(path), strict=strict, option="DATA")
    elif path.exists() or "/" in data or data.startswith("."):
        from sendvae_cli.data.folder import ImageFolder

        if not path.exists():
            raise UserError(f"DATA {data}: no such folder (and not a registered dataset name)")
        if not path.is_dir():
            raise UserError(f"DATA {data}: not a folder of images")
        source = ImageFolder(path, resolution, strict=strict)
    else:
        try:
            spec = registry.dataset(data)
        except UserError as error:
            raise UserError(f"DATA {data!r}: no such folder, and {error}") from None
        if spec.needs_root and not root:
            raise UserError(f"DATA {data}: this dataset lives on disk; pass --root PATH to its files")
        source = spec.build(resolution=resolution, num_images=num_images, seed=seed, root=root, strict=strict)
    if num_images is not None and num_images < len(source):
        source = Subset(source, num_images)
    return source
