"""The sampling pipeline's parts: labels, per-sample noise, the streamed .npz, the folder's resume rules."""

import json
import zipfile

import numpy as np
import pytest
import torch

from sendvae_cli.errors import UserError
from sendvae_cli.generate.folder import SampleFolder
from sendvae_cli.generate.grid import grid_classes, parse_grid
from sendvae_cli.generate.labels import balanced_labels, make_labels, random_labels
from sendvae_cli.generate.noise import SampleNoise, sample_seed
from sendvae_cli.generate.npz import write_npz


@pytest.mark.parametrize("n, k", [(50, 10), (53, 10), (7, 10), (50_000, 1000), (1001, 1000)])
def test_balanced_label_counts_are_exact(n, k):
    labels = balanced_labels(n, k, seed=3)
    counts = np.bincount(labels, minlength=k)
    assert len(labels) == n and counts.sum() == n
    assert set(counts.tolist()) <= {n // k, n // k + 1}
    assert (counts == n // k + 1).sum() == n % k


def test_labels_depend_on_the_seed_only():
    assert np.array_equal(balanced_labels(50, 10, 0), balanced_labels(50, 10, 0))
    assert not np.array_equal(balanced_labels(50, 10, 0), balanced_labels(50, 10, 1))
    assert not np.array_equal(balanced_labels(50, 10, 0), np.repeat(np.arange(10), 5))  # shuffled
    assert np.array_equal(random_labels(100, 10, 0)[:40], random_labels(40, 10, 0))  # label i: (seed, i)
    assert make_labels("balanced", 5, 0, 0) is None  # unconditional
    assert make_labels("balanced", 5, 10, 0, class_id=4).tolist() == [4] * 5


def test_sample_noise_depends_on_seed_and_index_only():
    a = SampleNoise(7, [0, 1, 2, 3], (4, 2, 2), torch.device("cpu"))
    b = SampleNoise(7, [3, 1], (4, 2, 2), torch.device("cpu"))
    first_a, first_b = a.draw(), b.draw()
    assert torch.equal(first_a[3], first_b[0]) and torch.equal(first_a[1], first_b[1])
    assert torch.equal(a.step_noise(0)[[3, 1]], b.step_noise(0))
    assert not torch.equal(first_a[0], first_a[1])
    assert sample_seed(0, 1) != sample_seed(1, 0)


def test_npz_is_streamed_byte_identical_and_adm_readable(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    labels = np.arange(5)
    a = write_npz(tmp_path / "a.npz", iter(images), 5, 4, 6, labels)
    b = write_npz(tmp_path / "b.npz", (im for im in images), 5, 4, 6, labels)
    assert a.read_bytes() == b.read_bytes()
    with np.load(a) as data:
        assert data.files == ["arr_0", "arr_1"]
        assert data["arr_0"].dtype == np.uint8 and np.array_equal(data["arr_0"], images)
        assert np.array_equal(data["arr_1"], labels)
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zipfile.ZipFile(a).infolist())
    with pytest.raises(ValueError):
        write_npz(tmp_path / "c.npz", iter(images[:3]), 5, 4, 6)
    assert not (tmp_path / "c.npz").exists()


def test_folder_refuses_other_settings_and_foreign_folders(tmp_path):
    folder = SampleFolder(tmp_path / "out", 10)
    assert folder.check({"cfg_scale": 1.5}) is None
    folder.write_manifest({"format": "sendvae-samples", "settings": {"cfg_scale": 1.5}, "status": "running"})
    assert folder.check({"cfg_scale": 1.5})["status"] == "running"
    with pytest.raises(UserError, match=r"written with other settings \(cfg_scale 1.5 \(now 2.0\)\)"):
        folder.check({"cfg_scale": 2.0})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("keep")
    with pytest.raises(UserError, match="not a sample folder"):
        SampleFolder(tmp_path / "other", 10).check({})
    assert json.loads(folder.manifest.read_text())["settings"] == {"cfg_scale": 1.5}


def test_png_names_sort_in_sample_order(tmp_path):
    folder = SampleFolder(tmp_path, 2500)
    names = [str(folder.png(i).relative_to(tmp_path)) for i in (0, 999, 1000, 2499)]
    assert names == sorted(names) and names[2] == "images/001000/001000.png"
    assert str(SampleFolder(tmp_path, 2_000_000).png(5).name) == "0000005.png"


def test_grid_helpers():
    assert grid_classes(4, 1000) == [0, 333, 666, 999] and grid_classes(20, 3) == [0, 1, 2]
    assert parse_grid("8x4") == (8, 4)
    with pytest.raises(ValueError):
        parse_grid("8")
