"""--save-embeddings export (embeddings_out.write_embeddings): typed errors, nothing partial left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from virnucpro.embeddings_out import EMBEDDINGS_DIRNAME, write_embeddings
from virnucpro.errors import CheckpointMismatch
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
    store = ShardStore(tmp_path, "fingerprint")
    with ResultWriter(tmp_path) as writer:
        for index, ids in enumerate(SHARDS):
            result = shard(index, ids)
            store.save(result)
            writer.add(result.ids, result.score1, result.score2)
    return tmp_path, store


def nothing_left(result_dir: Path) -> bool:
    return not (result_dir / EMBEDDINGS_DIRNAME).exists() and not (result_dir / f".{EMBEDDINGS_DIRNAME}.partial").exists()


FRAMES = sum(map(len, SHARDS))


@pytest.mark.parametrize("sizes", [None, [len(ids) for ids in SHARDS]])
def test_export_from_the_store(done_run, sizes):
    result_dir, store = done_run
    folder = write_embeddings(result_dir, len(SHARDS), FRAMES, DIMS, store, shard_sizes=sizes)
    assert folder.joinpath("ids.txt").read_text().split() == [i for ids in SHARDS for i in ids]
    dna = np.load(folder / "dnabert_s.npy")
    assert dna.shape == (FRAMES, DIMS[0]) and dna[:, 0].tolist() == [0, 0, 1, 2, 2]
    assert not (result_dir / f".{EMBEDDINGS_DIRNAME}.partial").exists()


@pytest.mark.parametrize("via_store", [True, False])
def test_missing_shard_is_a_typed_error_naming_its_file(done_run, via_store):
    result_dir, store = done_run
    store.shard_path(1).write_bytes(b"not a zip file")  # damaged: load() answers None
    load = store if via_store else (lambda i: store.load(i, need_embeddings=True))
    with pytest.raises(CheckpointMismatch, match="shard_000001.npz"):
        write_embeddings(result_dir, len(SHARDS), FRAMES, DIMS, load)
    assert nothing_left(result_dir)


def test_shard_of_other_frames_is_refused(done_run):
    result_dir, store = done_run
    store.save(shard(2, ["c_chunk_1F2", "x_chunk_1F1"]))
    with pytest.raises(CheckpointMismatch, match=r"shard_000002.npz.*x_chunk_1F1.*c_chunk_2F1"):
        write_embeddings(result_dir, len(SHARDS), FRAMES, DIMS, store)
    assert nothing_left(result_dir)


def test_expected_ids_are_passed_to_the_store(done_run, monkeypatch):
    result_dir, store = done_run
    seen = []
    original = ShardStore.load

    def spy(self, index, expected_ids=None, *, need_embeddings=False):
        seen.append((index, expected_ids, need_embeddings))
        return original(self, index, expected_ids, need_embeddings=need_embeddings)

    monkeypatch.setattr(ShardStore, "load", spy)
    write_embeddings(result_dir, len(SHARDS), FRAMES, DIMS, store, shard_sizes=[len(ids) for ids in SHARDS])
    assert seen == [(i, ids, True) for i, ids in enumerate(SHARDS)]


def test_any_failure_removes_the_partial_folder(done_run):
    result_dir, store = done_run

    def load(index):
        if index == 2:
            raise KeyboardInterrupt
        return store.load(index, need_embeddings=True)

    with pytest.raises(KeyboardInterrupt):
        write_embeddings(result_dir, len(SHARDS), FRAMES, DIMS, load)
    assert nothing_left(result_dir)
    with pytest.raises(CheckpointMismatch, match="5 frames, this run has 6"):
        write_embeddings(result_dir, len(SHARDS), FRAMES + 1, DIMS, store)
    assert nothing_left(result_dir)
