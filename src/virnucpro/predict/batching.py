"""Group sequences into batches by a token budget. Works on lengths only (no biology).

Every function returns a list of index arrays into the caller's sequence list; the caller
scatters results back by those indices, so batching never changes output order.
"""

from __future__ import annotations

import numpy as np


def reference_batches(lengths: np.ndarray, toks_per_batch: int, extra_toks: int = 1) -> list[np.ndarray]:
    """The original ESM-2 batching (fair-esm's FastaBatchedDataset.get_batch_indices).

    Sequences in ascending length order (stable, so equal lengths keep input order); a batch
    closes when adding the next sequence would make (longest + extra) * count exceed the
    budget. A sequence longer than the budget still gets a batch of its own.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    current: list[int] = []
    longest = 0
    for i in order:
        size = int(lengths[i]) + extra_toks
        if current and max(size, longest) * (len(current) + 1) > toks_per_batch:
            batches.append(np.asarray(current, dtype=np.int64))
            current, longest = [], 0
        longest = max(longest, size)
        current.append(int(i))
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


def budget_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Length-sorted batches whose padded size (longest * count) stays within max_tokens.

    Longest first, so a batch that does not fit in memory shows up at once rather than at the
    end of a long run. Sorting makes neighbours nearly equal in length: frames of one chunk
    length differ by a few residues, so padding waste stays small.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return []
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = lengths.size
    while start < n:
        longest = int(lengths[order[start]])
        count = max(1, max_tokens // max(longest, 1))
        batches.append(order[start : start + count])
        start += count
    return batches


def one_by_one(count: int) -> list[np.ndarray]:
    """The original DNABERT-S loop: one sequence per forward call."""
    return [np.asarray([i], dtype=np.int64) for i in range(count)]


def packed_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Length-sorted batches for packed (padding-free) kernels: the budget counts real tokens.

    Longest first, as budget_batches; a batch closes when the next sequence would push its
    total past max_tokens. Every batch is then nearly the same size, so the device sees the
    same amount of work per call whatever the length mix.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start, total = 0, 0
    for position, i in enumerate(order):
        if position > start and total + lengths[i] > max_tokens:
            batches.append(order[start:position])
            start, total = position, 0
        total += int(lengths[i])
    if start < lengths.size:
        batches.append(order[start:])
    return batches
