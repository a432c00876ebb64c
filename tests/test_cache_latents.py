"""`sendvae cache-latents` and `LatentDataset`: real processes, real HDF5, kill -9, torchrun."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import invoke, one_line_error, run_cli
from sendvae_cli.caches import latent_dataset
from sendvae_cli.caches.h5rows import parts_progress
from sendvae_cli.caches.latent_dataset import LatentDataset, row_seed
from sendvae_cli.errors import UserError

ROWS = 2000
# 2,000 shapes at 32 px with the flipped view; 4 blocks of 500 rows (2 per rank under torchrun).
SMALL = ["shapes", "--vae", "tiny", "--num-images", str(ROWS), "--resolution", "32", "--flip", "--batch-size", "50",
         "--workers", "1", "--block-rows", "500", "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    run_cli("cache-latents", *SMALL, "--out", out)
    return out


# -- the file --------------------------------------------------------------------------------------
def test_layout_attributes_and_whole_set_statistics(reference):
    with h5py.File(reference, "r") as f:
        for name in ("mean", "std", "mean_flip", "std_flip"):
            ds = f[name]
            assert ds.shape == (ROWS, 8, 2, 2) and ds.dtype == np.float16
            assert ds.chunks == (1, 8, 2, 2) and ds.compression is None
        assert f["labels"].dtype == np.int64 and set(f["labels"][:]) == set(range(5))
        assert f["rows"][7].decode() == "shapes/seed0/7"
        a = f.attrs
        assert a["format"] == "sendvae-latents" and a["format_version"] == 1 and a["complete"]
        assert a["producer"] == "sendvae cache-latents" and a["producer_version"]
        assert a["vae"] == "tiny" and a["vae_config"] == "tiny-f16d8" and a["vae_weights"] == "random(seed=0)"
        assert len(a["vae_weights_sha256"]) == 64 and len(a["row_order_sha256"]) == 64
        assert a["resolution"] == 32 and list(a["latent_shape"]) == [8, 2, 2] and a["flip"] and a["views"] == 2
        assert json.loads(a["source"])["kind"] == "shapes" and a["num_classes"] == 5
        assert json.loads(a["class_names"])[0] == "circle"
        mean = np.concatenate([f["mean"][:], f["mean_flip"][:]]).astype(np.float64)
        std = np.concatenate([f["std"][:], f["std_flip"][:]]).astype(np.float64)
        # The flipped view is its own encoding, not the flipped latent of the original.
        assert not np.array_equal(f["mean_flip"][:], f["mean"][:][:, :, :, ::-1])
        stored = {k: np.asarray(a[k]) for k in ("latent_mean", "latent_std", "mode_mean", "mode_std")}
        assert a["stats_count"] == 2 * ROWS * 4
    # Whole cache, both views, every position: z = mean + std * eps.
    expected_mean = mean.mean(axis=(0, 2, 3))
    expected_std = np.sqrt(mean.var(axis=(0, 2, 3)) + (std**2).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(stored["latent_mean"], expected_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stored["latent_std"], expected_std, rtol=1e-6)
    np.testing.assert_allclose(stored["mode_mean"], expected_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stored["mode_std"], mean.std(axis=(0, 2, 3)), rtol=1e-6)
    # And it describes what the reader samples: empirical moments of z agree.
    ds = LatentDataset(reference, seed=0, normalize=False)
    z = torch.stack([item[0] for item in ds.__getitems__(range(ROWS))]).double()
    np.testing.assert_allclose(z.mean(dim=(0, 2, 3)), expected_mean, atol=0.05)
    np.testing.assert_allclose(z.std(dim=(0, 2, 3)), expected_std, rtol=0.05)


def test_info_rerun_and_another_configuration(reference, tmp_path):
    info = invoke("cache-latents", "--info", reference)
    assert info.returncode == 0 and "complete" in info.stdout and "rows: 2000" in info.stdout and "views: 2" in info.stdout
    assert "latent_mean:" in info.stdout and "tiny-f16d8" in info.stdout
    before = reference.read_bytes()
    again = invoke("cache-latents", *[a for a in SMALL if a != "--quiet"], "--out", reference)
    assert again.returncode == 0 and "already complete" in again.stderr and reference.read_bytes() == before
    # Another VAE (same architecture, other weights) on the same output: refused, nothing touched.
    from sendvae_cli.vae.export import export_vae
    from sendvae_cli.vae.formats import build_vae
    from sendvae_cli.vae.autoencoder import VAE_CONFIGS

    torch.manual_seed(1)
    export_vae(build_vae(VAE_CONFIGS["tiny-f16d8"]), tmp_path / "other-vae")
    other = [*SMALL[:2], str(tmp_path / "other-vae"), *SMALL[3:]]
    proc = invoke("cache-latents", *other, "--out", reference)
    one_line_error(proc, "exists with another configuration", "vae_weights_sha256")
    assert reference.read_bytes() == before


def test_kill_9_then_rerun_gives_the_same_file(reference, tmp_path):
    out = tmp_path / "k.h5"
    parts = tmp_path / "k.h5.parts"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    interrupted = False
    for delay in (0.3, 0.05, 1.0, 0.0):
        proc = subprocess.Popen([sys.executable, "-m", "sendvae_cli", "cache-latents", *SMALL, "--out", str(out)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        # Wait for the first counted rows (not just the block files), however busy the machine is.
        while proc.poll() is None and time.time() < deadline and not (parts_progress(out) or {}).get("rows_done"):
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():  # finished before the kill; try an earlier moment
            out.unlink()
            continue
        progress = parts_progress(out)
        if progress and 0 < progress["rows_done"] < ROWS:
            interrupted = True
            break
    assert interrupted, "could not kill the run mid-way"
    # While unfinished: --info shows progress, the reader refuses with the same count.
    info = invoke("cache-latents", "--info", out)
    assert "not written yet" in info.stdout and f"of {ROWS} rows" in info.stdout
    with pytest.raises(UserError, match="incomplete.*rows"):
        LatentDataset(out)
    run_cli("cache-latents", *SMALL, "--out", out)
    assert out.read_bytes() == reference.read_bytes()
    assert not parts.exists()


def test_torchrun_two_processes_give_the_same_file(reference, tmp_path):
    out = tmp_path / "d.h5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sendvae_cli", "cache-latents", *SMALL, "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(out, "r") as f, h5py.File(reference, "r") as g:
        for key in g:
            np.testing.assert_array_equal(f[key][:], g[key][:], err_msg=key)
    assert out.read_bytes() == reference.read_bytes()  # attributes and statistics too


# -- the reader ------------------------------------------------------------------------------------
def test_reader_values_flip_labels_and_determinism(reference):
    with h5py.File(reference, "r") as f:
        mean, std, labels = f["mean"][:], f["std"][:], f["labels"][:]
        mean_flip, std_flip = f["mean_flip"][:], f["std_flip"][:]
        m, s = np.asarray(f.attrs["latent_mean"]), np.asarray(f.attrs["latent_std"])
    plain = LatentDataset(reference, sample=False, normalize=False, flip="none")
    assert len(plain) == ROWS and plain.num_classes == 5 and plain.latent_shape == (8, 2, 2)
    for i in (0, 1, 1234, ROWS - 1):
        z, y = plain[i]
        assert z.dtype == torch.float32 and y == labels[i]
        np.testing.assert_array_equal(z.numpy(), mean[i].astype(np.float32))

    ds = LatentDataset(reference, seed=7)
    views = []
    for i in range(64):
        seed, bit = row_seed(7, 0, i)
        views.append(bit)
        mu, sd = (mean_flip[i], std_flip[i]) if bit else (mean[i], std[i])
        eps = torch.randn((8, 2, 2), generator=torch.Generator().manual_seed(seed)).numpy()
        expected = ((mu.astype(np.float32) + sd.astype(np.float32) * eps) - m[:, None, None]) / s[:, None, None]
        z, y = ds[i]
        np.testing.assert_allclose(z.numpy(), expected, rtol=1e-5, atol=1e-5)
        assert y == labels[i]
    assert 10 < sum(views) < 54  # both views are picked
    assert torch.equal(ds[5][0], ds[5][0])  # reproducible
    batch = ds.__getitems__([5, 9, 5])
    assert torch.equal(batch[0][0], ds[5][0]) and torch.equal(batch[2][0], ds[5][0])
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], LatentDataset(reference, seed=7)[5][0])  # new noise each epoch
    assert not torch.equal(LatentDataset(reference, seed=8)[5][0], LatentDataset(reference, seed=7)[5][0])
    # Normalised samples have zero mean and unit variance per channel over the whole cache.
    z = torch.stack([item[0] for item in LatentDataset(reference, seed=1).__getitems__(range(ROWS))])
    np.testing.assert_allclose(z.mean(dim=(0, 2, 3)), 0, atol=0.06)
    np.testing.assert_allclose(z.std(dim=(0, 2, 3)), 1, atol=0.06)


def test_reader_opens_the_file_once_per_worker(reference, tmp_path, monkeypatch):
    log = tmp_path / "opens.log"
    real = latent_dataset._open_for_reading

    def logged(path, fast):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(path, fast)

    monkeypatch.setattr(latent_dataset, "_open_for_reading", logged)
    ds = LatentDataset(reference, seed=3)
    expected = [ds[i][0] for i in range(200)]  # opened here, in the main process: once
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, persistent_workers=True)
    for epoch in range(2):
        ds.set_epoch(epoch)
        got = torch.cat([z for z, _ in loader])
        if epoch == 0:
            np.testing.assert_array_equal(got[:200].numpy(), torch.stack(expected).numpy())
        else:
            assert not torch.equal(got[:200], torch.stack(expected))  # the workers saw the new epoch
    pids = log.read_text().split()
    assert pids[0] == str(os.getpid()) and len(pids) == 3 and len(set(pids[1:])) == 2


def test_reader_refuses_incomplete_truncated_and_foreign_files(reference, tmp_path):
    incomplete = tmp_path / "incomplete.h5"
    shutil.copy(reference, incomplete)
    with h5py.File(incomplete, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(UserError, match="marked incomplete"):
        LatentDataset(incomplete)
    truncated = tmp_path / "truncated.h5"
    data = reference.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        LatentDataset(truncated)
    with pytest.raises(UserError, match="no such file"):
        LatentDataset(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "tokens.h5", "w") as f:
        f["tokens"] = np.zeros((2, 4, 8), np.float16)
    with pytest.raises(UserError, match="teacher feature cache"):
        LatentDataset(tmp_path / "tokens.h5")
    proc = invoke("cache-latents", "--info", truncated)
    one_line_error(proc, str(truncated), "truncated or corrupt")
    assert truncated.read_bytes() == data[: len(data) // 2]


def test_compressed_cache_reads_the_same_through_h5py(tmp_path):
    from sendvae_cli.caches.latents import write_latent_cache

    rng = np.random.default_rng(0)
    mean = rng.standard_normal((40, 4, 2, 2)).astype(np.float16)
    std = np.abs(rng.standard_normal((40, 4, 2, 2))).astype(np.float16)
    labels = np.arange(40) % 3
    plain = write_latent_cache(tmp_path / "plain.h5", mean, std, labels, block_rows=16)
    packed = write_latent_cache(tmp_path / "gzip.h5", mean, std, labels, block_rows=16, compression="gzip")
    a, b = LatentDataset(plain, seed=2), LatentDataset(packed, seed=2)
    assert a.offsets is not None and b.offsets is None  # pread fast path vs h5py
    for i in (0, 17, 39):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] == labels[i]
    with h5py.File(packed, "r") as f:
        assert f["mean"].compression == "gzip"
        np.testing.assert_allclose(f.attrs["latent_mean"], mean.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-6,
                                   atol=1e-9)


# -- REPA-E caches ---------------------------------------------------------------------------------
def write_repae_cache(folder, rows=30, channels=4, side=2, seed=0):
    """A miniature cache in REPA-E's layout: `<name>.h5` with one `img-mean-std-*.npy` dataset per
    image (float32 (2C, H, W): mean then std), `dataset.json` labels, and `<name>_h5.json`."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((rows, channels, side, side)).astype(np.float32) + 0.5
    std = rng.uniform(0.1, 0.5, (rows, channels, side, side)).astype(np.float32)
    labels = rng.integers(0, 10, rows)
    names = [f"{i:08d}"[:5] + f"/img-mean-std-{i:08d}.npy" for i in range(rows)]
    path = folder / "e2e-vavae.h5"
    with h5py.File(path, "w") as f:
        for name, m, s in zip(names, mean, std):
            group, leaf = name.split("/")
            f.require_group(group).create_dataset(leaf, data=np.concatenate([m, s]))
        meta = json.dumps({"labels": [[n, int(y)] for n, y in zip(names, labels)]}).encode()
        f.create_dataset("dataset.json", data=np.array(meta, dtype="S"))
    (folder / "e2e-vavae_h5.json").write_text(json.dumps([*names, "dataset.json"]))
    return path, mean, std, labels


def test_reads_a_repae_cache(tmp_path):
    path, mean, std, labels = write_repae_cache(tmp_path)
    plain = LatentDataset(path, sample=False, normalize=False)
    assert plain.layout == "repa-e" and len(plain) == 30 and plain.latent_shape == (4, 2, 2) and not plain.has_flip
    for i in (0, 29):
        z, y = plain[i]
        np.testing.assert_array_equal(z.numpy(), mean[i])
        assert y == labels[i]
    # Statistics computed on open, with the same definition as ours.
    m64, s64 = mean.astype(np.float64), std.astype(np.float64)
    np.testing.assert_allclose(plain.latent_mean, m64.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(plain.latent_std, np.sqrt(m64.var(axis=(0, 2, 3)) + (s64**2).mean(axis=(0, 2, 3))),
                               rtol=1e-9)
    assert plain.stats_source == "computed on open"
    # Or taken from REPA-E's latents-stats file (latents_scale = 1/std, latents_bias = mean).
    stats = tmp_path / "e2e-vavae-latents-stats.pt"
    torch.save({"latents_scale": torch.full((1, 4, 1, 1), 2.0), "latents_bias": torch.full((1, 4, 1, 1), 0.25)}, stats)
    normed = LatentDataset(path, sample=False, stats=stats)
    np.testing.assert_allclose(normed[3][0].numpy(), (mean[3] - 0.25) * 2.0, rtol=1e-6)
    sampled = LatentDataset(path, seed=1, normalize=False)
    z, _ = sampled[4]
    assert not np.allclose(z.numpy(), mean[4]) and np.all(np.abs(z.numpy() - mean[4]) < 6 * std[4])
    info = invoke("cache-latents", "--info", path)
    assert "REPA-E latent cache" in info.stdout and "entries: 30" in info.stdout


# -- the VAE check and bad input -------------------------------------------------------------------
def test_check_cache_vae(reference):
    from sendvae_cli.caches.latents import CacheLatentsOptions, check_cache_vae, open_for_cache

    same = open_for_cache(CacheLatentsOptions(vae="tiny", seed=0))
    assert check_cache_vae(reference, same)["vae_config"] == "tiny-f16d8"
    other = open_for_cache(CacheLatentsOptions(vae="tiny", seed=1))
    with pytest.raises(UserError, match="written by another VAE .*'tiny'.*pass the VAE that wrote it"):
        check_cache_vae(reference, other)


def test_bad_input_is_one_line_and_destroys_nothing(reference, tmp_path):
    before = reference.read_bytes()
    one_line_error(invoke("cache-latents", tmp_path / "nope", "--vae", "tiny", "--out", tmp_path / "a.h5"),
                   "no such folder")
    one_line_error(invoke("cache-latents", "shapes", "--vae", tmp_path / "nope.pt", "--out", tmp_path / "a.h5"),
                   "--vae", "no such file")
    one_line_error(invoke("cache-latents", "shapes", "--out", tmp_path / "a.h5"), "--vae: missing")
    one_line_error(invoke("cache-latents", "shapes", "--vae", "tiny", "--compression", "zip"), "--compression zip")
    one_line_error(invoke("cache-latents", "shapes", "--vae", "tiny", "--out", tmp_path), "is a folder")
    one_line_error(invoke("cache-latents", "shapes", "--info", reference), "takes no DATA")
    one_line_error(invoke("cache-latents", "--info", tmp_path / "missing.h5"), "no such file")
    one_line_error(invoke("cache-latents", "shapes", "--vae", "tiny", "--resolution", "40", "--out", tmp_path / "a.h5"),
                   "--resolution 40")
    # A cache given where another file kind is expected, and the other way round.
    one_line_error(invoke("cache-latents", "--info", tmp_path), "is a folder")
    assert not (tmp_path / "a.h5").exists() and reference.read_bytes() == before
