"""Cut records into the overlapping chunks the original classifier was trained on (SPEC 1).

For a sequence of length L and chunk length cs:
    n = ceil(L / cs); R = n*cs - L; lo = R // n; up = lo + 1
    need = R - lo*(n-1); gaps = [up]*need + [lo]*(n-1-need)
    chunk i starts at i*cs - sum(gaps[:i]) and is seq[start : start+cs] (clipped at L)
The formula is odd (`need` usually exceeds n-1, so nearly every gap is `up`, and the last
chunk is often short), but it is what the released models saw, so it is kept exactly.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from virnucpro.layout import chunk_name, chunk_starts  # the id grammar and arithmetic, shared with the report
from virnucpro.stages.types import Chunk, Record

__all__ = ["chunk_length_hint", "chunk_record", "chunk_starts", "iter_chunks"]
SHORT_READ = 300  # bp: a shorter record is one short chunk for either model


def chunk_record(record: Record, chunk_len: int) -> list[Chunk]:
    """The chunks of one record, ids `{record.id}_chunk_{i}` from 1; [] for an empty record."""
    seq = record.seq
    if 0 < len(seq) <= chunk_len:  # the common case for reads: one whole chunk
        return [Chunk(chunk_name(record.id, 1), seq)]
    return [
        Chunk(chunk_name(record.id, i), seq[start : start + chunk_len])
        for i, start in enumerate(chunk_starts(len(seq), chunk_len), start=1)
    ]


def iter_chunks(
    records: Iterable[Record], chunk_len: int, on_empty: Callable[[str], None]
) -> Iterator[Chunk]:
    """Chunk a stream of records; an empty record yields nothing and is reported to on_empty.

    (The original divides by zero on an empty record; we skip it and let the caller warn.)
    """
    for record in records:
        if not record.seq:
            on_empty(record.id)
            continue
        yield from chunk_record(record, chunk_len)


def chunk_length_hint(lengths: list[int], chunk_len: int, input_name: str) -> str | None:
    """-m 500 on short reads: each is one chunk far shorter than the 500 bp chunks the model
    saw, and the 300 bp model fits them better. Judged on the first records' `lengths`."""
    short = sum(length < SHORT_READ for length in lengths)
    if chunk_len != 500 or short <= len(lengths) / 2:
        return None
    return (f"{short:,} of the first {len(lengths):,} records of {input_name} are shorter than {SHORT_READ} bp: "
            "-m 300 (the model for 300 bp chunks) suits short reads better than -m 500")
