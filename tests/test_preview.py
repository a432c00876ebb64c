"""Run grids: images spread across classes, a title (the step) and a caption per column."""

import torch

from sendvae_cli.train.preview import TEXT_HEIGHT, grid_image, save_grid, spread_rows


def test_rows_are_spread_across_classes_in_label_order():
    labels = [0] * 10 + [1] * 3 + [2] * 10  # a folder in file order: first 8 rows would all be class 0
    assert spread_rows(labels, 8) == [0, 10, 13, 1, 11, 14, 2, 12]
    assert spread_rows([-1] * 9, 3) == [0, 4, 8]  # unlabelled: evenly over the data
    assert spread_rows([1, 0], 8) == [1, 0]


def test_grid_has_a_title_and_captions_above_the_images(tmp_path):
    top = torch.full((3, 3, 16, 16), -1.0)  # black images
    grid = save_grid([top, top], tmp_path / "g.png", title="step 100", captions=["cat", "dog", "elephant"])
    assert grid.shape == (2 * TEXT_HEIGHT + 2 * 18 + 2, 3 * 18 + 2, 3)
    header = grid[: 2 * TEXT_HEIGHT]
    assert (header < 128).any()  # text was drawn
    assert (grid[2 * TEXT_HEIGHT + 2 : 2 * TEXT_HEIGHT + 18, 2:18] == 0).all()  # the first image, black
    assert (tmp_path / "g.png").is_file()
    assert grid_image([top]).shape == (18 + 2, 3 * 18 + 2, 3)  # no text: no header
