import numpy as np
import pytest

from virnucpro.errors import CheckpointMismatch
from virnucpro.layout import STORE_DIRNAME
from virnucpro.store import ShardResult, ShardStore


def result(index, n=3):
    rng = np.random.default_rng(index)
    s1 = rng.random(n, dtype=np.float32)
    return ShardResult(index, [f"r{index}_{i}" for i in range(n)], s1, 1 - s1)


def test_save_load_roundtrip(tmp_path):
    store = ShardStore(tmp_path / STORE_DIRNAME, "fp1")
    r = result(0)
    store.save(r)
    assert store.has(0) and not store.has(1)
    back = store.load(0, expected_ids=r.ids)
    assert back.ids == r.ids
    np.testing.assert_array_equal(back.score1, r.score1)
    assert back.score1.dtype == np.float32
    # no temporaries left behind
    assert sorted(p.name for p in (tmp_path / STORE_DIRNAME).iterdir()) == ["manifest.json", "shard_000000.npz"]


def test_reopen_same_fingerprint_keeps_shards(tmp_path):
    ShardStore(tmp_path / STORE_DIRNAME, "fp1").save(result(0))
    assert ShardStore(tmp_path / STORE_DIRNAME, "fp1").has(0)


def test_fingerprint_mismatch_refused_unless_restart(tmp_path):
    ShardStore(tmp_path / STORE_DIRNAME, "fp1").save(result(0))
    with pytest.raises(CheckpointMismatch, match="--restart"):
        ShardStore(tmp_path / STORE_DIRNAME, "fp2")
    store = ShardStore(tmp_path / STORE_DIRNAME, "fp2", restart=True)
    assert not store.has(0)


def test_damaged_or_foreign_shard_is_dropped(tmp_path):
    store = ShardStore(tmp_path / STORE_DIRNAME, "fp1")
    store.save(result(0))
    store.save(result(1))
    store.shard_path(0).write_bytes(b"not an npz")
    assert store.load(0) is None and not store.has(0)
    assert store.load(1, expected_ids=["other"]) is None and not store.has(1)


def test_discard(tmp_path):
    store = ShardStore(tmp_path / STORE_DIRNAME, "fp1")
    store.save(result(0))
    store.discard()
    assert not (tmp_path / STORE_DIRNAME).exists()


def test_a_checkpoint_that_cannot_be_written_is_an_output_error(tmp_path):
    import shutil

    from virnucpro.errors import OutputError

    store = ShardStore(tmp_path / STORE_DIRNAME, "fp1")
    shutil.rmtree(tmp_path / STORE_DIRNAME)  # e.g. removed (or the disk filled) mid-run
    with pytest.raises(OutputError, match="shard_000000"):
        store.save(result(0))


def test_saves_on_the_writer_thread_are_all_there_after_close(tmp_path):
    store = ShardStore(tmp_path / STORE_DIRNAME, "fp1")
    for index in range(10):  # more than wait in the queue at once
        store.save_later(result(index))
    store.close()
    assert all(store.has(index) for index in range(10))
    assert store.load(7, expected_ids=result(7).ids) is not None


def test_a_failed_save_on_the_writer_thread_is_raised_to_the_caller(tmp_path, monkeypatch):
    from virnucpro.errors import OutputError

    store = ShardStore(tmp_path / STORE_DIRNAME, "fp1")

    def full(_result):
        raise OutputError("cannot write checkpoint: No space left on device")

    monkeypatch.setattr(store, "save", full)
    store.save_later(result(0))
    with pytest.raises(OutputError, match="No space left"):
        store.close()
