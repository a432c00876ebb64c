"""The folder index: a second command on an unchanged folder verifies nothing; changes are noticed."""

import os

import numpy as np
import pytest
from PIL import Image

from sendvae_cli.data import folder_index
from sendvae_cli.data.folder import ImageFolder


def save(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)


@pytest.fixture
def counted(monkeypatch):
    """Counts the files PIL opens to verify."""
    opened = []
    real = folder_index.check_image

    def check(path):
        opened.append(path.name)
        return real(path)

    monkeypatch.setattr(folder_index, "check_image", check)
    return opened


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("SENDVAE_CACHE", str(tmp_path / "cache"))
    for cls in ("cat", "dog"):
        for i in range(3):
            save(tmp_path / "data" / cls / f"{i}.png", 10 * i)
    (tmp_path / "data" / "dog" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    return tmp_path / "data"


def test_second_open_verifies_nothing_and_gives_the_same_rows(data, counted):
    first = ImageFolder(data, 16)
    assert len(counted) == 7 and first.verified == 7
    assert first.index_location.parent == data.parent / "cache" / "folders"
    second = ImageFolder(data, 16)
    assert len(counted) == 7 and second.verified == 0  # nothing opened the second time
    assert second.row_ids() == first.row_ids() == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert second.skipped == first.skipped and second.skipped[0][0] == "dog/bad.jpg"  # the verdict is kept too


def test_changed_added_and_removed_files_are_noticed(data, counted):
    ImageFolder(data, 16)
    counted.clear()
    (data / "dog" / "bad.jpg").unlink()
    save(data / "cat" / "9.png", 200)
    changed = data / "cat" / "0.png"
    Image.fromarray(np.full((20, 20, 3), 77, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a new mtime however coarse the file system's clock
    folder = ImageFolder(data, 16)
    assert sorted(counted) == ["0.png", "9.png"]
    assert folder.skipped == [] and "cat/9.png" in folder.row_ids() and len(folder) == 7
    assert int(folder[0][0][0, 8, 8]) == 77


def test_row_order_is_by_path_components(tmp_path, monkeypatch):
    """'a/b.png' sorts before 'a-c.png', as sorted(Path) did before there was an index."""
    monkeypatch.setenv("SENDVAE_CACHE", str(tmp_path / "cache"))
    for name in ("a-c.png", "a/b.png", "A.png"):
        save(tmp_path / "d" / name)
    assert ImageFolder(tmp_path / "d", 16).row_ids() == ["A.png", "a/b.png", "a-c.png"]


def test_an_unwritable_cache_falls_back_to_the_temporary_folder(data, counted, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SENDVAE_CACHE", str(blocker))
    monkeypatch.setattr(folder_index.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    ImageFolder(data, 16)
    again = ImageFolder(data, 16)
    assert again.verified == 0 and again.index_location.parent.parent == tmp_path / "tmp"


def test_other_ranks_of_a_launch_read_the_published_index_without_listing(data, counted, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    first = ImageFolder(data, 16)
    monkeypatch.setenv("LOCAL_RANK", "1")

    def no_listing(root):
        raise AssertionError("rank 1 listed the folder")

    real_scan = folder_index.scan
    monkeypatch.setattr(folder_index, "scan", no_listing)
    other = ImageFolder(data, 16)
    assert other.row_ids() == first.row_ids() and other.skipped == first.skipped
    # A later launch (another run id) does not take this launch's index for its own.
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-2")
    monkeypatch.setattr(folder_index, "scan", real_scan)
    assert folder_index.index_folder(data.resolve(), rank_wait_s=0.3) is not None  # waited, then built its own
