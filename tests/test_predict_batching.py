import numpy as np
import pytest

from virnucpro.engine.sharding import plan_shards
from virnucpro.predict.batching import budget_batches, one_by_one, reference_batches


def fair_esm_batches(lengths, toks_per_batch, extra):
    """fair-esm's FastaBatchedDataset.get_batch_indices, as the oracle for the reference path."""
    esm = pytest.importorskip("esm")
    dataset = esm.data.FastaBatchedDataset([f"s{i}" for i in range(len(lengths))],
                                           ["A" * n for n in lengths])
    return dataset.get_batch_indices(toks_per_batch, extra_toks_per_seq=extra)


@pytest.mark.parametrize("seed", range(5))
def test_reference_batches_match_fair_esm(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 400, size=int(rng.integers(1, 200)))
    lengths[: len(lengths) // 3] = 166  # many equal lengths: order among ties matters
    ours = [b.tolist() for b in reference_batches(lengths, 2048, extra_toks=1)]
    assert ours == fair_esm_batches(lengths.tolist(), 2048, 1)


def test_reference_batches_166_aa_gives_12_per_batch():
    # SPEC section 4: the original's 2048-token budget holds 12 proteins of 166 aa.
    batches = reference_batches(np.full(30, 166), 2048)
    assert [len(b) for b in batches] == [12, 12, 6]


def test_budget_batches_cover_every_index_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 170, size=1000)
    batches = budget_batches(lengths, 4096)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    for b in batches:
        assert lengths[b].max() * len(b) <= 4096
    # longest first: the first batch holds the longest sequence
    assert lengths[batches[0]].max() == lengths.max()


def test_budget_batches_oversized_sequence_gets_its_own_batch():
    batches = budget_batches(np.array([10, 5000, 10]), 100)
    assert [b.tolist() for b in batches][0] == [1]


def test_one_by_one():
    assert [b.tolist() for b in one_by_one(3)] == [[0], [1], [2]]


def test_plan_shards_keeps_order_and_budget():
    items = list(range(100))
    shards = list(plan_shards(items, cost=lambda i: 3, budget=10))
    assert [s.index for s in shards] == list(range(len(shards)))
    assert sum((s.items for s in shards), []) == items
    assert all(s.cost >= 10 for s in shards[:-1])
    assert [len(s.items) for s in shards[:2]] == [4, 4]


def test_plan_shards_empty():
    assert list(plan_shards([], cost=len, budget=5)) == []


def test_packed_batches_budget_counts_real_tokens():
    from virnucpro.predict.batching import packed_batches

    rng = np.random.default_rng(1)
    lengths = rng.integers(30, 170, size=2000)
    batches = packed_batches(lengths, 8192)
    assert sorted(np.concatenate(batches).tolist()) == list(range(2000))
    sizes = [int(lengths[b].sum()) for b in batches]
    assert all(s <= 8192 for s in sizes)
    assert all(s > 8192 - 170 for s in sizes[:-1])  # full up to one sequence
    assert [b.tolist() for b in packed_batches(np.array([9000, 5]), 100)] == [[0], [1]]
    assert packed_batches(np.array([], dtype=np.int64), 10) == []
