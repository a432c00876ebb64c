"""Image folders: labels, ordering, corrupt files, and the ADM centre crop."""

import numpy as np
import pytest
from PIL import Image

from sendvae_cli.data.folder import ImageFolder, adm_center_crop
from sendvae_cli.errors import UserError


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_class_subfolders_give_sorted_labels_and_flat_folders_none(tmp_path):
    for cls, value in (("zebra", 10), ("ant", 200)):
        for i in range(2):
            save(tmp_path / "lab" / cls / f"{i}.png", np.full((20, 30, 3), value, np.uint8))
    folder = ImageFolder(tmp_path / "lab", 16)
    assert folder.class_names == ["ant", "zebra"] and folder.num_classes == 2
    assert folder.row_ids() == ["ant/0.png", "ant/1.png", "zebra/0.png", "zebra/1.png"]
    image, label = folder[2]
    assert image.shape == (3, 16, 16) and image.dtype.is_floating_point is False
    assert label == 1 and int(image[0, 8, 8]) == 10
    save(tmp_path / "flat" / "a.png", np.zeros((16, 16, 3), np.uint8))
    flat = ImageFolder(tmp_path / "flat", 16)
    assert flat.num_classes is None and flat[0][1] == -1


def test_corrupt_images_are_skipped_once_or_refused_with_strict(tmp_path):
    save(tmp_path / "a.png", np.zeros((16, 16, 3), np.uint8))
    for i in range(5):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    folder = ImageFolder(tmp_path, 16)
    assert len(folder) == 1
    summary = folder.skipped_summary()
    assert summary.startswith("skipped 5 unreadable image(s)") and "bad0.jpg" in summary and "2 more" in summary
    with pytest.raises(UserError, match="unreadable image bad0.jpg"):
        ImageFolder(tmp_path, 16, strict=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        ImageFolder(tmp_path / "empty", 16)


def test_adm_center_crop_geometry():
    # A wide image whose central square is white and whose sides are black: the crop keeps the centre.
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255
    crop = adm_center_crop(Image.fromarray(wide), 32)
    assert crop.shape == (32, 32, 3)
    assert crop[:, 2:-2].min() > 240  # centre square only
    # Large images are first halved with a box filter: an image of 2x2 blocks of one colour keeps it.
    blocks = np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3, np.ones((32, 32), np.uint8))
    crop = adm_center_crop(Image.fromarray(np.stack([blocks] * 3, -1)), 8)
    assert crop.shape == (8, 8, 3)
    assert np.abs(crop[..., 0].astype(int) - (np.arange(64).reshape(8, 8) * 3)).max() <= 2
    # Already the right size: unchanged.
    same = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(adm_center_crop(Image.fromarray(same), 32), same)
