"""sendvae_cli.weights, the one door for weight files: a lost network is "not found", a full disk is not."""

import errno
import subprocess
import sys
import urllib.error

import pytest
import torch

from sendvae_cli import weights
from sendvae_cli.errors import UserError


def test_local_os_errors_are_not_a_lost_network():
    assert weights.is_unreachable(urllib.error.URLError("no route to host"))
    assert weights.is_unreachable(ConnectionError("reset"))
    for code in (errno.EACCES, errno.ENOSPC, errno.EROFS):
        assert not weights.is_unreachable(OSError(code, "local"))


def test_download_reports_no_network_as_none_and_raises_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    calls = []

    def fails_with(error):
        def fetch(url, dst, hash_prefix=None, progress=True):
            calls.append(hash_prefix)
            raise error
        return fetch

    monkeypatch.setattr(torch.hub, "download_url_to_file", fails_with(urllib.error.URLError("offline")))
    assert weights.download("https://example.invalid/w-1234abcd.pth", "w-1234abcd.pth", hash_prefix="1234abcd") is None
    assert calls == ["1234abcd"]
    monkeypatch.setattr(torch.hub, "download_url_to_file", fails_with(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        weights.download("https://example.invalid/w.pth", "w.pth")


def test_offline_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded while offline"))
    assert weights.download("https://example.invalid/w.pth", "w.pth") is None


def test_resolve_file_looks_in_order_and_never_downloads_without_a_url(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    packaged = tmp_path / "package" / "w.pth"
    packaged.parent.mkdir()
    packaged.touch()
    monkeypatch.setattr(weights, "packaged_file", lambda package, path: packaged if package == "pkg" else None)
    file = weights.WeightFile("w.pth", "--w", package=("pkg", "w.pth"))
    assert weights.resolve_file(file) == packaged
    cached = tmp_path / "hub" / "checkpoints" / "w.pth"
    cached.parent.mkdir(parents=True)
    cached.touch()
    assert weights.resolve_file(file) == cached  # the hub cache first
    assert weights.resolve_file(weights.WeightFile("w.pth", "--w", package=("pkg", "w.pth"), package_first=True)) == packaged
    assert weights.resolve_file(file, tmp_path / "hub" / "checkpoints") == cached  # a given folder holding it
    with pytest.raises(UserError, match=r"^--w .*nowhere: no such file \(expected w\.pth"):
        weights.resolve_file(file, tmp_path / "nowhere")
    assert weights.resolve_file(weights.WeightFile("x.pth", "--x", url="https://example.invalid/x.pth")) is None
    with pytest.raises(LookupError, match="x.pth"):
        weights.resolve_file(weights.WeightFile("x.pth", "--x"), missing=lambda: LookupError("x.pth"))


def test_the_weights_door_imports_no_torch():
    code = "import sys, sendvae_cli.weights, sendvae_cli.provenance; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
