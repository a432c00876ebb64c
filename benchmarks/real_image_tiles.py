"""A folder of real photographs at a small size, from the images scikit-image and scikit-learn ship.

    python benchmarks/real_image_tiles.py OUT [--size 64] [--grid 4]

Each colour photograph (scikit-image: astronaut, chelsea, coffee, rocket, the stereo_motorcycle
pair, hubble_deep_field, retina, immunohistochemistry; scikit-learn: china, flower)
is centre-cropped to a square, resized (bicubic) to grid x size pixels and cut into grid x grid
tiles of size x size: 176 images with the defaults. Written as OUT/tiles/NAME-RR-CC.png, and
split into two interleaved halves OUT/half-a, OUT/half-b (every other tile) for a Fréchet
distance between two samples of one distribution. No network: both packages ship these files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
SKLEARN = ("china.jpg", "flower.jpg")


def photographs() -> dict[str, np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_image

    images = {name: getattr(skimage.data, name)() for name in SKIMAGE}
    images["motorcycle_left"], images["motorcycle_right"], _ = skimage.data.stereo_motorcycle()
    images.update({name.split(".")[0]: load_sample_image(name) for name in SKLEARN})
    return {k: np.ascontiguousarray(v[..., :3]) for k, v in images.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--grid", type=int, default=4)
    args = parser.parse_args()
    tiles, halves = args.out / "tiles", (args.out / "half-a", args.out / "half-b")
    for folder in (tiles, *halves):
        folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for name, pixels in sorted(photographs().items()):
        h, w = pixels.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = Image.fromarray(pixels[top : top + side, left : left + side])
        full = np.asarray(square.resize((args.grid * args.size,) * 2, Image.BICUBIC))
        for r in range(args.grid):
            for c in range(args.grid):
                tile = Image.fromarray(full[r * args.size : (r + 1) * args.size, c * args.size : (c + 1) * args.size])
                file = f"{name}-{r:02d}-{c:02d}.png"
                tile.save(tiles / file)
                tile.save(halves[index % 2] / file)
                index += 1
    print(f"wrote {index} tiles of {args.size} px to {tiles}, halves of {(index + 1) // 2} and {index // 2}")


if __name__ == "__main__":
    main()
