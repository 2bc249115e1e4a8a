"""--save-embeddings export (stages/embeddings.write_embeddings): typed errors, nothing partial left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from virnucpro.errors import CheckpointMismatch
from virnucpro.layout import EMBEDDINGS_DIRNAME, STORE_DIRNAME
from virnucpro.stages.embeddings import write_embeddings
from virnucpro.stages.write import ResultWriter
from virnucpro.store import ShardResult, ShardStore

DIMS = (3, 2)
SHARDS = [["a_chunk_1F1", "a_chunk_1R2"], ["b_chunk_1F1"], ["c_chunk_1F2", "c_chunk_2F1"]]


def shard(index: int, ids: list[str]) -> ShardResult:
    n = len(ids)
    s1 = np.full(n, 0.25, np.float32)
    return ShardResult(index, ids, s1, 1 - s1,
                       np.full((n, DIMS[0]), index, np.float32), np.full((n, DIMS[1]), -index, np.float32))


@pytest.fixture
def done_run(tmp_path) -> tuple[Path, ShardStore]:
    """A finished run's folder: its result files and the store that still holds its shards."""
    store = ShardStore(tmp_path / STORE_DIRNAME, "fingerprint")
    with ResultWriter(tmp_path) as writer:
        for index, ids in enumerate(SHARDS):
            result = shard(index, ids)
            store.save(result)
            writer.add(result.ids, result.score1, result.score2)
    return tmp_path, store


def nothing_left(result_dir: Path) -> bool:
    return not (result_dir / EMBEDDINGS_DIRNAME).exists() and not list(result_dir.glob(f".{EMBEDDINGS_DIRNAME}.*"))


FRAMES = sum(map(len, SHARDS))


def test_export_from_the_store(done_run):
    result_dir, store = done_run
    folder = write_embeddings(result_dir, store, len(SHARDS), FRAMES, DIMS)
    assert folder.joinpath("ids.txt").read_text().split() == [i for ids in SHARDS for i in ids]
    dna = np.load(folder / "dnabert_s.npy")
    assert dna.shape == (FRAMES, DIMS[0]) and dna[:, 0].tolist() == [0, 0, 1, 2, 2]
    assert nothing_left(result_dir) is False and not list(result_dir.glob(f".{EMBEDDINGS_DIRNAME}.*"))


def test_an_earlier_export_is_replaced(done_run):
    result_dir, store = done_run
    (result_dir / EMBEDDINGS_DIRNAME).mkdir()
    (result_dir / EMBEDDINGS_DIRNAME / "stale.npy").write_bytes(b"old")
    folder = write_embeddings(result_dir, store, len(SHARDS), FRAMES, DIMS)
    assert sorted(p.name for p in folder.iterdir()) == ["dnabert_s.npy", "esm2.npy", "ids.txt"]


def test_missing_shard_is_a_typed_error_naming_its_file(done_run):
    result_dir, store = done_run
    store.shard_path(1).write_bytes(b"not a zip file")  # damaged: load() answers None
    with pytest.raises(CheckpointMismatch, match="shard_000001.npz"):
        write_embeddings(result_dir, store, len(SHARDS), FRAMES, DIMS)
    assert nothing_left(result_dir)


def test_shard_of_other_frames_is_refused(done_run):
    result_dir, store = done_run
    store.save(shard(2, ["c_chunk_1F2", "x_chunk_1F1"]))
    with pytest.raises(CheckpointMismatch, match=r"shard_000002.npz.*x_chunk_1F1.*c_chunk_2F1"):
        write_embeddings(result_dir, store, len(SHARDS), FRAMES, DIMS)
    assert nothing_left(result_dir)


def test_any_failure_removes_the_partial_folder(done_run, monkeypatch):
    result_dir, store = done_run
    real_load = ShardStore.load

    def load(self, index, expected_ids=None, *, need_embeddings=False):
        if index == 2:
            raise KeyboardInterrupt
        return real_load(self, index, expected_ids, need_embeddings=need_embeddings)

    monkeypatch.setattr(ShardStore, "load", load)
    with pytest.raises(KeyboardInterrupt):
        write_embeddings(result_dir, store, len(SHARDS), FRAMES, DIMS)
    assert nothing_left(result_dir)
    monkeypatch.setattr(ShardStore, "load", real_load)
    with pytest.raises(CheckpointMismatch, match="5 frames, this run has 6"):
        write_embeddings(result_dir, store, len(SHARDS), FRAMES + 1, DIMS)
    assert nothing_left(result_dir)
