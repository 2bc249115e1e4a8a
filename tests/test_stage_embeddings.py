"""--save-embeddings export (stages/embeddings.EmbeddingsWriter): rows written as shards
arrive, files NumPy reads (also memory-mapped), nothing partial left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from virnucpro.layout import EMBEDDINGS_DIRNAME
from virnucpro.stages.embeddings import EmbeddingsWriter, npy_header

DIMS = (3, 2)
SHARDS = [["a_chunk_1F1", "a_chunk_1R2"], ["b_chunk_1F1"], ["c_chunk_1F2", "c_chunk_2F1"]]


def rows(index: int, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    n = len(ids)
    return np.full((n, DIMS[0]), index, np.float32), np.full((n, DIMS[1]), -index - 0.5, np.float32)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.glob(f".{EMBEDDINGS_DIRNAME}.*")]


def test_rows_in_arrival_order_read_back_by_numpy(tmp_path):
    with EmbeddingsWriter(tmp_path, DIMS) as writer:
        for index, ids in enumerate(SHARDS):
            writer.add(ids, *rows(index, ids))
        assert not (tmp_path / EMBEDDINGS_DIRNAME).exists()  # only once complete
    folder = tmp_path / EMBEDDINGS_DIRNAME
    assert folder.joinpath("ids.txt").read_text().split() == [i for ids in SHARDS for i in ids]
    dna, protein = np.load(folder / "dnabert_s.npy"), np.load(folder / "esm2.npy", mmap_mode="r")
    assert dna.shape == (5, 3) and dna.dtype == np.float32 and dna[:, 0].tolist() == [0, 0, 1, 2, 2]
    assert protein.shape == (5, 2) and protein[:, 1].tolist() == [-0.5, -0.5, -1.5, -2.5, -2.5]
    assert leftovers(tmp_path) == []


def test_no_rows_give_empty_arrays(tmp_path):
    with EmbeddingsWriter(tmp_path, DIMS):
        pass
    assert np.load(tmp_path / EMBEDDINGS_DIRNAME / "esm2.npy").shape == (0, 2)


def test_the_header_has_one_size_whatever_the_row_count():
    assert len(npy_header(0, 768)) == len(npy_header(10**15, 2560)) == 128
    with pytest.raises(ValueError):
        npy_header(10**90, 2560)


def test_an_earlier_export_is_replaced_and_a_failed_one_leaves_it(tmp_path):
    earlier = tmp_path / EMBEDDINGS_DIRNAME
    earlier.mkdir()
    (earlier / "stale.npy").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), EmbeddingsWriter(tmp_path, DIMS) as writer:
        writer.add(SHARDS[0], *rows(0, SHARDS[0]))
        raise KeyboardInterrupt
    assert [p.name for p in earlier.iterdir()] == ["stale.npy"] and leftovers(tmp_path) == []
    with EmbeddingsWriter(tmp_path, DIMS) as writer:
        writer.add(SHARDS[0], *rows(0, SHARDS[0]))
    assert sorted(p.name for p in earlier.iterdir()) == ["dnabert_s.npy", "esm2.npy", "ids.txt"]


def test_rows_of_the_wrong_shape_or_missing_are_refused(tmp_path):
    with pytest.raises(ValueError), EmbeddingsWriter(tmp_path, DIMS) as writer:
        writer.add(SHARDS[0], np.zeros((2, 4), np.float32), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError), EmbeddingsWriter(tmp_path, DIMS) as writer:
        writer.add(SHARDS[0], None, None)
    assert leftovers(tmp_path) == [] and not (tmp_path / EMBEDDINGS_DIRNAME).exists()
