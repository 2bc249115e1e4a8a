"""Six-frame translation and frame selection (SPEC section 2), vectorised with numpy.

Per chunk (upper-cased): frames F1..F3 read the chunk from offset 0, 1, 2; R1..R3 read its
reverse complement (only A/C/G/T complemented, other letters kept) from offset 0, 1, 2.
Codons step by 3 while i <= len-3; a codon with any non-ACGT letter is dropped (the protein
gets shorter). A frame is kept when its protein is non-empty and has no stop ('*'); its
nucleotide slice is frame[f : f + 3p + 1] (p = protein length), one base past the codons
when there is room. Kept frames come out per chunk in the order F1 F2 F3 R1 R2 R3.

How it is vectorised. A batch of chunks is joined into one byte string, and every position
p gets a triplet index: its three bases in base 5 (A,C,G,T = 0..3, anything else = 4), so
0..124. Lookup tables on that index give the forward codon's amino acid, the amino acid of
its reverse complement (reverse frames read the same triplets backwards, complemented), and
whether each is a stop. A frame is an arithmetic run of triplet positions with step 3, so its
protein length and stop counts are differences of per-phase (position mod 3) cumulative sums:
no per-frame work at all. Only kept frames (a minority) have their codons gathered into
proteins, and only building their Frame objects is a Python loop.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from virnucpro.stages.types import Chunk, Frame

# Standard genetic code, codons enumerated with bases in T, C, A, G order (NCBI table 1).
_CODE_TCAG = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
_FRAME_SUFFIXES = ("F1", "F2", "F3", "R1", "R2", "R3")
_TRIPLETS = 125  # base-5 triplet indices
# Batches of about this many bases: big enough to amortise numpy call overhead, small enough
# that the working arrays (a few bytes per base) stay small.
_BATCH_BASES = 1 << 20
# Per-run counts are packed into one int64 as three bit fields of this width (see _run_counts).
_FIELD_BITS = 21


def _base_codes() -> np.ndarray:
    """256-entry table: upper-case A,C,G,T -> 0..3, every other byte -> 4."""
    table = np.full(256, 4, dtype=np.uint8)
    for code, letter in enumerate(b"ACGT"):
        table[letter] = code
    return table


def _amino_of(codon: str) -> int:
    rank = {b: i for i, b in enumerate("TCAG")}
    return ord(_CODE_TCAG[16 * rank[codon[0]] + 4 * rank[codon[1]] + rank[codon[2]]])


def _triplet_tables() -> tuple[np.ndarray, np.ndarray]:
    """Tables indexed by triplet index (0..124).

    amino[2, 125]: row 0 = amino acid byte of the triplet read forwards, row 1 = of its
    reverse complement; 0 when the triplet has a non-ACGT base (the codon is dropped).
    flags[125] (int64): valid | forward-is-stop << B | reverse-is-stop << 2B, B = _FIELD_BITS.
    """
    complement = {"A": "T", "C": "G", "G": "C", "T": "A"}
    amino = np.zeros((2, _TRIPLETS), dtype=np.uint8)
    flags = np.zeros(_TRIPLETS, dtype=np.int64)
    for index in range(_TRIPLETS):
        digits = (index // 25, index // 5 % 5, index % 5)
        if 4 in digits:
            continue
        codon = "".join("ACGT"[d] for d in digits)
        reverse = "".join(complement[b] for b in reversed(codon))
        amino[0, index], amino[1, index] = _amino_of(codon), _amino_of(reverse)
        stop_f, stop_r = amino[0, index] == ord("*"), amino[1, index] == ord("*")
        flags[index] = 1 | int(stop_f) << _FIELD_BITS | int(stop_r) << (2 * _FIELD_BITS)
    return amino, flags


_BASE_CODE = _base_codes()
_AMINO, _FLAGS = _triplet_tables()
_COMPLEMENT = bytes.maketrans(b"ACGT", b"TGCA")  # everything else maps to itself


def _triplet_index(upper: bytes) -> np.ndarray:
    """Base-5 triplet index at every start position p = 0..T-3 (uint8, max 124)."""
    bases = _BASE_CODE[np.frombuffer(upper, dtype=np.uint8)]
    return bases[:-2] * 25 + bases[1:-1] * 5 + bases[2:]


def _frame_runs(starts: np.ndarray, lengths: np.ndarray):
    """Per (chunk, frame) run of triplet positions: (first read, step, count, lowest).

    Runs are ordered chunk by chunk, frames F1 F2 F3 R1 R2 R3 within a chunk.
    Forward frame f reads positions start+f, +3, ... (count = (n-f)//3, as `i <= n-3`).
    Reverse frame f reads revcomp from offset f: its j-th codon is the reverse complement of
    the forward triplet at start + n-3-f - 3j, so it walks the chunk backwards (step -3).
    `lowest` is the smallest position of the run (0 for empty runs, which are never read).
    """
    offsets = np.arange(3)
    counts = np.maximum(lengths[:, None] - offsets, 0) // 3  # [chunks, 3]
    forward_first = starts[:, None] + offsets
    reverse_first = starts[:, None] + lengths[:, None] - 3 - offsets
    reverse_lowest = reverse_first - 3 * (counts - 1)
    first = np.concatenate([forward_first, reverse_first], axis=1).ravel()
    count = np.concatenate([counts, counts], axis=1).ravel()
    lowest = np.concatenate([forward_first, reverse_lowest], axis=1).ravel()
    lowest = np.where(count > 0, lowest, 0)
    step = np.tile(np.array([3, 3, 3, -3, -3, -3], dtype=np.int64), len(starts))
    return first, step, count, lowest


def _run_counts(triplets: np.ndarray, lowest: np.ndarray, count: np.ndarray):
    """(valid codons, forward stops, reverse stops) over each run of positions lowest+3k.

    The three flags are packed into one int64 per position (bit fields _FIELD_BITS wide), so
    a single cumulative sum per phase serves all three; a run's sum is one difference, and
    no field can carry into the next because a run has fewer than 2**_FIELD_BITS codons.
    (The running total may wrap around int64; differences are still exact mod 2**64.)
    """
    rows = -(-len(triplets) // 3)
    cum = np.zeros((3, rows + 1), dtype=np.int64)
    for phase in range(3):
        packed = _FLAGS[triplets[phase::3]]
        np.cumsum(packed, out=cum[phase, 1 : len(packed) + 1])
    row, phase = np.divmod(lowest, 3)
    sums = cum[phase, row + count] - cum[phase, row]
    mask = (1 << _FIELD_BITS) - 1
    return sums & mask, (sums >> _FIELD_BITS) & mask, (sums >> (2 * _FIELD_BITS)) & mask


def _proteins(triplets, first, step, count, is_reverse) -> str:
    """Concatenated proteins of the given runs (codons with non-ACGT bases dropped)."""
    bounds = np.cumsum(count)
    # position of codon j of run r = first[r] + step[r] * j, with j counted from the run start
    run_base = np.repeat(first - step * (bounds - count), count)
    positions = run_base + np.repeat(step, count) * np.arange(bounds[-1], dtype=np.int64)
    table_row = np.repeat(is_reverse.astype(np.intp), count)
    residues = _AMINO[table_row, triplets[positions]]
    return residues[residues != 0].tobytes().decode("ascii")


def _select_batch(chunks: Sequence[Chunk]) -> list[Frame]:
    joined = "".join(chunk.seq for chunk in chunks)
    try:
        upper = joined.encode("ascii").upper()
    except UnicodeEncodeError:
        raise ValueError("chunk sequences must be ASCII (the reader refuses other input)") from None
    if len(upper) < 3:
        return []
    lengths = np.fromiter((len(c.seq) for c in chunks), dtype=np.int64, count=len(chunks))
    if lengths.max() // 3 >= 1 << _FIELD_BITS:
        raise ValueError(f"chunks longer than {3 << _FIELD_BITS} bases are not supported")
    starts = np.cumsum(lengths) - lengths

    triplets = _triplet_index(upper)
    first, step, count, lowest = _frame_runs(starts, lengths)
    protein_len, stops_f, stops_r = _run_counts(triplets, lowest, count)
    is_reverse = step < 0
    kept = (protein_len > 0) & (np.where(is_reverse, stops_r, stops_f) == 0)
    runs = np.flatnonzero(kept)
    if len(runs) == 0:
        return []
    residues = _proteins(triplets, first[runs], step[runs], count[runs], is_reverse[runs])
    return _build_frames(chunks, upper, starts, lengths, runs, protein_len[runs], residues)


def _build_frames(chunks, upper, starts, lengths, runs, kept_len, residues) -> list[Frame]:
    """Frame objects for the kept runs: slice proteins and nucleotide windows out of one
    string holding the batch followed by its reverse complement."""
    total = len(upper)
    text = (upper + upper.translate(_COMPLEMENT)[::-1]).decode("ascii")
    chunk_index, frame = np.divmod(runs, 6)
    start, length = starts[chunk_index], lengths[chunk_index]
    # In the reverse half, the chunk's reverse complement occupies [2T-start-n, 2T-start).
    chunk_from = np.where(frame < 3, start, 2 * total - start - length)
    nt_from = chunk_from + frame % 3
    nt_to = np.minimum(nt_from + 3 * kept_len + 1, chunk_from + length)
    aa_to = np.cumsum(kept_len)
    aa_from = aa_to - kept_len
    ids = [chunks[c].id + _FRAME_SUFFIXES[f] for c, f in zip(chunk_index.tolist(), frame.tolist())]
    return [
        Frame(frame_id, text[a:b], residues[x:y])
        for frame_id, a, b, x, y in zip(
            ids, nt_from.tolist(), nt_to.tolist(), aa_from.tolist(), aa_to.tolist()
        )
    ]


def _batches(chunks: Sequence[Chunk]) -> Iterator[Sequence[Chunk]]:
    """Split a long list into runs of about _BATCH_BASES bases (keeps memory bounded)."""
    batch_start, size = 0, 0
    for i, chunk in enumerate(chunks):
        size += len(chunk.seq)
        if size >= _BATCH_BASES:
            yield chunks[batch_start : i + 1]
            batch_start, size = i + 1, 0
    if batch_start < len(chunks):
        yield chunks[batch_start:]


def select_frames(chunks: Sequence[Chunk]) -> list[Frame]:
    """Kept frames of all chunks, in chunk order, F1 F2 F3 R1 R2 R3 within a chunk."""
    frames: list[Frame] = []
    for batch in _batches(chunks):
        frames.extend(_select_batch(batch))
    return frames
