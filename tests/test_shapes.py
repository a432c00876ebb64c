"""The procedural `shapes` dataset: determinism, layout, and that pixels reflect the factors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from sendvae_cli.data import shapes
from sendvae_cli.data.shapes import (
    ATTRIBUTE_NAMES,
    BACKGROUNDS,
    COLOURS,
    FACTORS,
    NUM_CLASSES,
    ShapesSource,
    build,
    draw_row,
    render,
)


@pytest.fixture(scope="module")
def ds64() -> ShapesSource:
    return ShapesSource(500, 64, seed=3)


def test_constants_describe_thirty_one_hot_columns():
    assert NUM_CLASSES == 5
    assert len(FACTORS) >= 5 and len(ATTRIBUTE_NAMES) == 30
    assert ATTRIBUTE_NAMES[0] == "shape=circle" and ATTRIBUTE_NAMES[-1] == "texture=checker"
    assert len(set(ATTRIBUTE_NAMES)) == len(ATTRIBUTE_NAMES)
    ds = ShapesSource(3, 32)
    assert ds.num_classes == 5 and ds.class_names == ["circle", "square", "triangle", "diamond", "cross"]
    assert ds.attribute_names == ATTRIBUTE_NAMES


def test_deterministic_across_instances_and_seeds():
    a, b, other = ShapesSource(20, 32, seed=7), ShapesSource(20, 32, seed=7), ShapesSource(20, 32, seed=8)
    for i in range(20):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert torch.equal(xa, xb) and ya == yb
        assert a.factors(i) == b.factors(i)
    assert any(not torch.equal(a[i][0], other[i][0]) for i in range(20))


def test_small_dataset_is_prefix_of_big_one():
    small, big = ShapesSource(10, 48, seed=1), ShapesSource(1000, 48, seed=1)
    for i in range(10):
        assert torch.equal(small[i][0], big[i][0])
        assert np.array_equal(small.attributes(i), big.attributes(i))
    assert small.row_ids() == [big.row_id(i) for i in range(10)]


@pytest.mark.parametrize("resolution", [16, 32, 48, 64, 96, 256])
def test_image_shape_and_dtype(resolution):
    ds = ShapesSource(4, resolution)
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, resolution, resolution) and image.dtype == torch.uint8
        assert isinstance(label, int) and 0 <= label < NUM_CLASSES
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch[0].shape == (2, 3, resolution, resolution)


def test_bad_arguments_and_indices():
    for resolution in (0, 8, 15):
        with pytest.raises(ValueError):
            ShapesSource(10, resolution)
    with pytest.raises(ValueError):
        ShapesSource(-1, 32)
    ds = ShapesSource(5, 32)
    for index in (-1, 5, 100):
        with pytest.raises(IndexError):
            ds[index]
    assert ds[np.int64(2)][1] == ds[2][1]  # samplers may hand numpy ints


def test_attributes_one_hot_per_factor_and_match_factors(ds64):
    matrix = ds64.attribute_matrix()
    assert matrix.shape == (500, 30) and matrix.dtype == np.uint8
    for i in range(50):
        attrs = ds64.attributes(i)
        assert attrs.dtype == np.uint8 and np.array_equal(attrs, matrix[i])
        factors = ds64.factors(i)
        assert list(factors) == list(FACTORS)
        on = {ATTRIBUTE_NAMES[j] for j in np.flatnonzero(attrs)}
        assert on == {f"{name}={value}" for name, value in factors.items()}
    start = 0
    for values in FACTORS.values():  # exactly one 1 per factor block, on every row
        assert (matrix[:, start : start + len(values)].sum(axis=1) == 1).all()
        start += len(values)


def test_labels_are_the_shape(ds64):
    for i in range(100):
        assert ds64.label(i) == FACTORS["shape"].index(ds64.factors(i)["shape"])
    for i in range(10):
        assert ds64[i][1] == ds64.label(i)


def test_every_factor_value_appears_roughly_uniformly(ds64):
    counts = ds64.attribute_matrix().sum(axis=0)
    start = 0
    for values in FACTORS.values():
        expected = 500 / len(values)
        block = counts[start : start + len(values)]
        assert (block > 0.5 * expected).all() and (block < 1.5 * expected).all(), block
        start += len(values)


def test_images_differ_between_rows():
    ds = ShapesSource(60, 32)
    assert len({ds[i][0].numpy().tobytes() for i in range(60)}) == 60


def test_fill_colour_matches_drawn_hue(ds64):
    for i in range(150):
        image = ds64[i][0].float().numpy()
        inside = ds64.coverage(i) > 0.999
        assert inside.sum() >= 4
        mean = image[:, inside].mean(axis=1)
        cosine = COLOURS @ mean / (np.linalg.norm(COLOURS, axis=1) * np.linalg.norm(mean))
        colour = FACTORS["colour"].index(ds64.factors(i)["colour"])
        assert cosine.argmax() == colour, (i, ds64.factors(i), mean)
        if ds64.factors(i)["texture"] == "plain":  # no darkening: the exact palette colour
            assert np.abs(image[:, inside] - COLOURS[colour][:, None]).max() <= 1


def test_corner_pixels_show_the_background(ds64):
    for i in range(150):
        image = ds64[i][0].float().numpy()
        background = BACKGROUNDS[FACTORS["background"].index(ds64.factors(i)["background"])]
        for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            pixel = image[:, y, x]
            assert np.abs(pixel - background).max() <= 12  # only the faint gradient differs
            assert np.abs(BACKGROUNDS - pixel).sum(axis=1).argmin() == FACTORS["background"].index(
                ds64.factors(i)["background"]
            )


def test_size_position_and_texture_show_in_pixels(ds64):
    area = {name: [] for name in FACTORS["size"]}
    spread = {name: [] for name in FACTORS["texture"]}
    for i in range(300):
        factors, cover = ds64.factors(i), ds64.coverage(i)
        area[factors["size"]].append(cover.sum())
        ys, xs = np.indices(cover.shape)
        cx, cy = ((xs + 0.5) * cover).sum() / cover.sum() / 64, ((ys + 0.5) * cover).sum() / cover.sum() / 64
        # the triangle's centroid is its centre, so every shape's mass centre is in its bin
        assert np.abs(np.array(shapes.POSITIONS) - cx).argmin() == FACTORS["hpos"].index(factors["hpos"])
        assert np.abs(np.array(shapes.POSITIONS) - cy).argmin() == FACTORS["vpos"].index(factors["vpos"])
        inside = cover > 0.999
        spread[factors["texture"]].append(ds64[i][0].float().numpy()[:, inside].std(axis=1).max())
    small, medium, large = (np.mean(area[s]) for s in FACTORS["size"])
    assert small < medium < large
    assert max(spread["plain"]) < 1
    for texture in ("stripes", "dots", "checker"):
        assert np.median(spread[texture]) > 10, texture


def test_shape_areas_match_their_geometry():
    # coverage integrates each SDF: compare with the exact area of each shape, in units of r^2
    exact = {
        "circle": math.pi * 0.81,
        "square": 1.6**2,
        "triangle": 3 * math.sqrt(3) / 4,
        "diamond": 2 * 0.6,
        "cross": 2 * 1.84 * 0.6 - 0.36,
    }
    row = draw_row(0, 0)
    for shape, name in enumerate(FACTORS["shape"]):
        for angle in (0.0, 0.2):
            probe = dataclasses.replace(row, factors=(shape,) + row.factors[1:], cx=0.5, cy=0.5, r=0.2, angle=angle)
            _, alpha, _ = render(probe, 256)
            assert alpha.sum() / (0.2 * 256) ** 2 == pytest.approx(exact[name], rel=0.01), name


@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes_stay_inside_the_image(resolution):
    # worst case: the largest size, jittered up, at the extreme jittered position, fully rotated
    row = draw_row(0, 0)
    low = shapes.POSITIONS[0] - shapes.POSITION_JITTER
    high = shapes.POSITIONS[-1] + shapes.POSITION_JITTER
    r = shapes.SIZES[-1] * (1 + shapes.SIZE_JITTER)
    for shape in range(NUM_CLASSES):
        for angle in (-shapes.MAX_ROTATION, 0.0, shapes.MAX_ROTATION):
            for cx, cy in ((low, low), (high, high), (low, high), (high, low)):
                probe = dataclasses.replace(row, factors=(shape,) + row.factors[1:], cx=cx, cy=cy, r=r, angle=angle)
                _, alpha, box = render(probe, resolution)
                cover = np.zeros((resolution, resolution), np.float32)
                cover[box] = alpha
                border = np.concatenate([cover[0], cover[-1], cover[:, 0], cover[:, -1]])
                assert border.max() == 0, (shape, angle, cx, cy)
                assert alpha.sum() > 0


def test_row_ids_describe_and_factory():
    ds = ShapesSource(3, 32, seed=5)
    assert ds.row_id(2) == "shapes/seed5/2"
    assert ds.describe() == {"kind": "shapes", "seed": 5, "rows": 3, "resolution": 32, "version": 1}
    built = build(None)
    assert len(built) == 10_000 and built.resolution == 256 and built.seed == 0
    built = build(None, resolution=32, num_images=7, seed=5, root="ignored")
    assert len(built) == 7 and torch.equal(built[2][0], ds[2][0])
