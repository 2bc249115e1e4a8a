"""The input as a stream of kept frames: records -> chunks -> frames, in input order, in
blocks (translation is vectorised over blocks of chunks), with flat memory."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from virnucpro.stages.chunk import chunk_starts, iter_chunks
from virnucpro.stages.read import MASK64, IdTally, InputState, ReadPosition, read_records
from virnucpro.stages.translate import select_frames
from virnucpro.stages.types import Frame, Record
from virnucpro.stages.write import IntermediateFiles

CHUNKS_PER_TRANSLATION_BLOCK = 8_192


class RecordSink(Protocol):
    """What the stream reports every record to, as it is read (before --rna-as-dna)."""

    def add(self, record: Record, chunks: int) -> None: ...

_U_AS_T = str.maketrans("Uu", "Tt")
_NAMED_RNA_RECORDS = 5


@dataclass
class RnaRecords:
    """Records holding U. The original drops every codon with a U (stops included), so such a
    record's frames look stop-free; read as DNA (--rna-as-dna) its U are T."""

    count: int = 0
    first: list[str] = field(default_factory=list)  # the first few ids, for the warning

    def add(self, record_id: str) -> None:
        self.count += 1
        if len(self.first) < _NAMED_RNA_RECORDS:
            self.first.append(record_id)


def stream_frames(path: Path, chunk_len: int, files: IntermediateFiles, *, rna_as_dna: bool = False,
                  started: InputState | None = None, index: RecordSink | None = None,
                  on_empty: Callable[[str], None],
                  on_progress: Callable[[int, int, int, float], None],
                  on_rna: Callable[[RnaRecords], None] = lambda rna: None) -> Iterator[Frame]:
    """The kept frames of the file at `path`, writing intermediates on the way.

    started: the file and its ids as the run found them; once read to the end they must be
    the same, else InputError (a file still being written). index: gets every record's id,
    length and number of chunks. on_empty(record id): an empty
    record, skipped. on_progress(bytes read, bytes in the file, frames so far, CPU seconds so
    far): after each block (bytes consumed give progress a fraction and an ETA; counting the
    frames ahead would cost as much as these stages). on_rna(records): at the end, when
    records held U."""
    position = ReadPosition(path)
    seen, rna = _Seen(), RnaRecords()
    records = _as_dna(_counted(read_records(path, position), seen, index, chunk_len), rna_as_dna, rna)
    chunks = iter_chunks(records, chunk_len, on_empty=on_empty)
    frames_read, cpu_seconds, t0 = 0, 0.0, time.perf_counter()
    while block := list(itertools.islice(chunks, CHUNKS_PER_TRANSLATION_BLOCK)):
        files.add_chunks(block)
        frames = select_frames(block)
        files.add_frames(frames)
        frames_read += len(frames)
        cpu_seconds += time.perf_counter() - t0
        on_progress(position.bytes_read(), position.total, frames_read, cpu_seconds)
        yield from frames
        t0 = time.perf_counter()
    if started is not None:
        started.check_unchanged(path, IdTally(seen.records, seen.digest & MASK64))
    if rna.count:
        on_rna(rna)


@dataclass
class _Seen:
    records: int = 0
    digest: int = 0  # sum of the ids' hashes (reduced mod 2**64 at the end)


def _counted(records: Iterable[Record], seen: _Seen, index: RecordSink | None, chunk_len: int) -> Iterator[Record]:
    for record in records:
        seen.records += 1
        seen.digest += hash(record.id)
        if index is not None:
            index.add(record, len(chunk_starts(len(record.seq), chunk_len)))
        yield record


def _as_dna(records: Iterable[Record], rna_as_dna: bool, rna: RnaRecords) -> Iterator[Record]:
    for record in records:
        if "U" in record.seq or "u" in record.seq:
            rna.add(record.id)
            if rna_as_dna:
                record = Record(record.id, record.seq.translate(_U_AS_T), record.title)
        yield record
