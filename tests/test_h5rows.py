"""The crash-safe row cache on its own: blocks, resume, fingerprints, merge."""

import h5py
import numpy as np
import pytest

from sendvae_cli.caches.h5rows import PROGRESS, ArraySpec, RowCache, batches
from sendvae_cli.errors import UserError

ARRAYS = {"x": ArraySpec((3, 2), "float16"), "y": ArraySpec((), "int64")}


def rows(lo, hi):
    x = np.arange(lo * 6, hi * 6, dtype=np.float16).reshape(hi - lo, 3, 2)
    return {"x": x, "y": np.arange(lo, hi, dtype=np.int64)}


def fill(cache, rank=0, world=1, batch=4, stop_after=None):
    blocks = cache.open_blocks(rank, world)
    written = 0
    for block, index in batches(blocks, batch):
        if stop_after is not None and written >= stop_after:
            break
        block.write(rows(index[0], index[-1] + 1))
        written += len(index)
    for block in blocks:
        block.close()


def test_write_resume_merge(tmp_path):
    out = tmp_path / "c.h5"
    cache = RowCache(out, 23, ARRAYS, {"what": "test"}, block_rows=10)
    cache.prepare(is_main=True)
    fill(cache, stop_after=8)  # an interrupted run: 8 rows of block 0 done
    assert not out.exists()
    with h5py.File(cache.block_path(0), "r") as f:
        assert f[PROGRESS][0] == 8
    again = RowCache(out, 23, ARRAYS, {"what": "test"}, block_rows=10)
    again.prepare(is_main=True)
    todo = [index for _, index in batches(again.open_blocks(0, 1), 4)]
    assert todo[0] == [8, 9] and todo[1] == [10, 11, 12, 13]  # continues; batches stay block-aligned
    fill(again)
    again.merge({"note": "hello"}, extra={"names": np.array([f"r{i}" for i in range(23)], dtype=object)})
    assert not again.parts.exists()
    with h5py.File(out, "r") as f:
        assert f["x"].chunks == (1, 3, 2) and f["x"].dtype == np.float16
        np.testing.assert_array_equal(f["x"][:], rows(0, 23)["x"])
        np.testing.assert_array_equal(f["y"][:], np.arange(23))
        assert f["names"][5].decode() == "r5"
        assert f.attrs["complete"] and f.attrs["note"] == "hello"
    assert RowCache(out, 23, ARRAYS, {"what": "test"}, block_rows=10).existing_complete()


def test_blocks_split_across_ranks_give_the_same_file(tmp_path):
    one = RowCache(tmp_path / "one.h5", 25, ARRAYS, {"k": 1}, block_rows=8)
    one.prepare(True)
    fill(one)
    one.merge({})
    two = RowCache(tmp_path / "two.h5", 25, ARRAYS, {"k": 1}, block_rows=8)
    two.prepare(True)
    fill(two, rank=1, world=2)
    fill(two, rank=0, world=2)
    two.merge({})
    assert (tmp_path / "one.h5").read_bytes() == (tmp_path / "two.h5").read_bytes()


def test_other_configuration_is_refused_and_nothing_is_overwritten(tmp_path):
    out = tmp_path / "c.h5"
    cache = RowCache(out, 5, ARRAYS, {"teacher": "a"}, block_rows=10)
    cache.prepare(True)
    fill(cache, stop_after=4)
    other = RowCache(out, 5, ARRAYS, {"teacher": "b"}, block_rows=10)
    with pytest.raises(UserError, match="unfinished run of another configuration.*teacher: 'a' there, 'b' now"):
        other.prepare(True)
    fill(cache)
    cache.merge({})
    before = out.read_bytes()
    with pytest.raises(UserError, match="exists with another configuration"):
        other.existing_complete()
    assert out.read_bytes() == before
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        RowCache(tmp_path / "junk.h5", 5, ARRAYS, {}, block_rows=10).existing_complete()
