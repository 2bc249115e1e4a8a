"""Chunking (SPEC 1) and six-frame selection (SPEC 2) against plain references written here."""

from __future__ import annotations

import math
import random

import pytest

import virnucpro.stages.translate as translate_module
from virnucpro.stages.chunk import chunk_record, chunk_starts, iter_chunks
from virnucpro.stages.translate import select_frames
from virnucpro.stages.types import Chunk, Frame, Record

# --------------------------------------------------------------------------- chunking


def reference_chunks(seq: str, cs: int) -> list[str]:
    """SPEC section 1, transcribed literally (list of gaps, sum of a prefix)."""
    n = math.ceil(len(seq) / cs)
    r = n * cs - len(seq)
    lo = math.floor(r / n)
    up = lo + 1
    need = r - lo * (n - 1)
    gaps = [up] * need + [lo] * (n - 1 - need)
    return [seq[i * cs - sum(gaps[:i]) : i * cs - sum(gaps[:i]) + cs] for i in range(n)]


def test_spec_examples() -> None:
    assert chunk_starts(700, 500) == [0, 349]
    assert [c.seq for c in chunk_record(Record("x", "A" * 700), 500)] == ["A" * 500, "A" * 351]
    assert chunk_record(Record("s", "acg"), 300) == [Chunk("s_chunk_1", "acg")]
    assert chunk_record(Record("e", "G" * 300), 300) == [Chunk("e_chunk_1", "G" * 300)]
    assert chunk_record(Record("z", ""), 300) == []


@pytest.mark.parametrize("cs", [1, 2, 3, 7, 300, 500])
def test_chunks_match_spec_formula(cs: int) -> None:
    rng = random.Random(cs)
    lengths = list(range(1, 3 * cs + 5)) if cs < 10 else [1, 2, cs - 1, cs, cs + 1, 2 * cs + 1]
    lengths += [rng.randint(1, 20 * cs) for _ in range(60)]
    for length in lengths:
        seq = "".join(rng.choice("ACGTacgtN") for _ in range(length))
        chunks = chunk_record(Record("rec", seq), cs)
        assert [c.seq for c in chunks] == reference_chunks(seq, cs), length
        assert [c.id for c in chunks] == [f"rec_chunk_{i}" for i in range(1, len(chunks) + 1)]


def test_iter_chunks_skips_and_reports_empty_records() -> None:
    reported: list[str] = []
    records = [Record("a", "ACGT"), Record("empty", ""), Record("b", "G" * 650)]
    chunks = list(iter_chunks(records, 300, on_empty=reported.append))
    assert reported == ["empty"]
    assert [c.id for c in chunks] == ["a_chunk_1", "b_chunk_1", "b_chunk_2", "b_chunk_3"]


def test_chunk_length_must_be_positive() -> None:
    with pytest.raises(ValueError):
        chunk_record(Record("a", "ACGT"), 0)


# --------------------------------------------------------------------------- translation

STANDARD_CODE = {
    "TTT": "F", "TTC": "F", "TTA": "L", "TTG": "L", "CTT": "L", "CTC": "L", "CTA": "L", "CTG": "L",
    "ATT": "I", "ATC": "I", "ATA": "I", "ATG": "M", "GTT": "V", "GTC": "V", "GTA": "V", "GTG": "V",
    "TCT": "S", "TCC": "S", "TCA": "S", "TCG": "S", "CCT": "P", "CCC": "P", "CCA": "P", "CCG": "P",
    "ACT": "T", "ACC": "T", "ACA": "T", "ACG": "T", "GCT": "A", "GCC": "A", "GCA": "A", "GCG": "A",
    "TAT": "Y", "TAC": "Y", "TAA": "*", "TAG": "*", "CAT": "H", "CAC": "H", "CAA": "Q", "CAG": "Q",
    "AAT": "N", "AAC": "N", "AAA": "K", "AAG": "K", "GAT": "D", "GAC": "D", "GAA": "E", "GAG": "E",
    "TGT": "C", "TGC": "C", "TGA": "*", "TGG": "W", "CGT": "R", "CGC": "R", "CGA": "R", "CGG": "R",
    "AGT": "S", "AGC": "S", "AGA": "R", "AGG": "R", "GGT": "G", "GGC": "G", "GGA": "G", "GGG": "G",
}


def reference_frames(chunk: Chunk) -> list[Frame]:
    """SPEC section 2 one codon at a time, the way the original reads."""
    seq = chunk.seq.upper()
    pairs = {"A": "T", "T": "A", "C": "G", "G": "C"}
    revcomp = "".join(pairs.get(base, base) for base in reversed(seq))
    kept = []
    for strand, text in (("F", seq), ("R", revcomp)):
        for offset in range(3):
            protein = "".join(
                STANDARD_CODE.get(text[i : i + 3], "") for i in range(offset, len(text) - 2, 3)
            )
            if protein and "*" not in protein:
                nt = text[offset : offset + 3 * len(protein) + 1]
                kept.append(Frame(f"{chunk.id}{strand}{offset + 1}", nt, protein))
    return kept


def _random_chunk(rng: random.Random, index: int) -> Chunk:
    alphabet = rng.choice(["ACGT", "ACGT" * 6 + "N", "ACGTacgt", "ACGU", "ACGTRYKMSWBDHVN-", "ACGTNacgtnRy*"])
    length = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, rng.randint(8, 40), rng.randint(40, 120), 300, 500])
    return Chunk(f"c{index}_chunk_1", "".join(rng.choice(alphabet) for _ in range(length)))


def test_select_frames_matches_per_codon_reference() -> None:
    rng = random.Random(2024)
    chunks = [_random_chunk(rng, i) for i in range(3000)]
    expected = [frame for chunk in chunks for frame in reference_frames(chunk)]
    assert len(expected) > 1000  # the sample must exercise many kept frames
    assert select_frames(chunks) == expected


def test_select_frames_across_internal_batches(monkeypatch) -> None:
    monkeypatch.setattr(translate_module, "_BATCH_BASES", 50)
    rng = random.Random(5)
    chunks = [_random_chunk(rng, i) for i in range(400)]
    assert select_frames(chunks) == [f for c in chunks for f in reference_frames(c)]


def test_stop_free_500bp_chunk_lengths() -> None:
    """A 500 bp chunk whose six frames are all open: nt lengths 499/499/498 with 166 aa."""
    seq = "GCT" * 166 + "GC"  # Ala repeats forwards; revcomp reads AGC / GCA / CAG repeats
    frames = select_frames([Chunk("open_chunk_1", seq)])
    assert [f.id[-2:] for f in frames] == ["F1", "F2", "F3", "R1", "R2", "R3"]
    assert [len(f.nt) for f in frames] == [499, 499, 498, 499, 499, 498]
    assert [len(f.aa) for f in frames] == [166] * 6
    assert frames == reference_frames(Chunk("open_chunk_1", seq))


def test_dropped_codons_shorten_protein_but_not_slice_start() -> None:
    frames = select_frames([Chunk("n_chunk_1", "ATGNNNGCTTTT")])
    forward = frames[0]
    assert forward.id == "n_chunk_1F1" and forward.aa == "MAF"
    assert forward.nt == "ATGNNNGCTT"  # 3p+1 bases from the frame start, N codon included


def test_empty_inputs_and_non_ascii() -> None:
    assert select_frames([]) == []
    assert select_frames([Chunk("a_chunk_1", "AC")]) == []
    with pytest.raises(ValueError):
        select_frames([Chunk("a_chunk_1", "ACGTé")])
