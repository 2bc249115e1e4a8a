"""Per-sequence calls: one verdict per input record, from its chunks' scores.

The original stops at per-frame rows and per-chunk True/False; users want one row per input
sequence and the hits as FASTA. Built from two streams in input order, each spooled to a
temporary file as the run goes (flat memory on any input):
  - every record read, with its length and number of chunks (RecordIndex), and
  - the frames' scores, folded per chunk (max score1, max score2 over its frames) and per
    record (CallTally).
`write_sequence_summary` joins them into prediction_summary.tsv; `write_viral_fasta` copies
the records called virus from the input. A chunk counts as virus by the original's rule
(its max score2 >= its max score1) or, with a threshold T, when its max score2 >= T; a record
is called virus when its share of virus chunks reaches the minimum fraction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro.errors import OutputError
from virnucpro.layout import atomic_write, chunk_is_virus, open_temp, record_and_chunk
from virnucpro.stages.read import read_records
from virnucpro.stages.write import wrapped

SUMMARY_HEADER = ("sequence_id\tlength\tchunks\tchunks_scored\tvirus_chunks\tvirus_fraction\t"
                  "max_virus_score\tmean_virus_score\tcall\n")
CALLS = ("virus", "others", "no_frames", "skipped")


@dataclass(frozen=True)
class CallRule:
    min_virus_fraction: float = 0.5  # a record is virus when this share of its scored chunks is
    threshold: float | None = None  # a chunk is virus when its max score2 >= this; None: the original's rule

    def chunk_is_virus(self, max_score1: float, max_score2: float) -> bool:
        return chunk_is_virus(max_score1, max_score2, self.threshold)


@dataclass(frozen=True)
class CallCounts:
    """How many input records got each call."""

    records: int = 0
    virus: int = 0
    others: int = 0
    no_frames: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"records": self.records, "virus": self.virus, "others": self.others,
                "no_frames": self.no_frames, "skipped": self.skipped}


class _Spool:
    """Rows of text in a temporary file of the result folder, written now, read back once."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path, self._handle = open_temp(folder, name)
        self._lines: list[str] = []

    def write(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= 4096:
            self.flush()

    def flush(self) -> None:
        try:
            self._handle.write("".join(self._lines))
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._lines.clear()

    def rows(self) -> Iterator[list[str]]:
        self.flush()
        self._handle.close()
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                yield line.rstrip("\n").split("\t")

    def discard(self) -> None:
        with suppress(OSError):
            self._handle.close()
        with suppress(OSError):
            self.path.unlink(missing_ok=True)


class RecordIndex(_Spool):
    """Every input record in order: id, length, number of chunks."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, "record-index")

    def add(self, record_id: str, length: int, chunks: int) -> None:
        self.write(f"{record_id}\t{length}\t{chunks}\n")


class CallTally(_Spool):
    """Frame scores, in input order, folded per chunk and then per record: for each record
    with at least one kept frame, its scored chunks, virus chunks, max score2 and the sum of
    its chunks' max score2."""

    def __init__(self, folder: Path, rule: CallRule) -> None:
        super().__init__(folder, "record-scores")
        self.rule = rule
        self._record: str | None = None
        self._chunk: int | None = None
        self._chunk_max = [0.0, 0.0]
        self._scored = self._virus = 0
        self._max2 = -math.inf
        self._sum2 = 0.0

    def add(self, frame_ids: Iterable[str], score1: np.ndarray, score2: np.ndarray) -> None:
        for frame_id, s1, s2 in zip(frame_ids, score1.tolist(), score2.tolist()):
            record, chunk = _record_and_chunk(frame_id)
            if record != self._record or chunk != self._chunk:
                self._end_chunk()
                if record != self._record:
                    self._end_record()
                    self._record = record
                self._chunk, self._chunk_max = chunk, [s1, s2]
            else:
                self._chunk_max = [max(self._chunk_max[0], s1), max(self._chunk_max[1], s2)]

    def _end_chunk(self) -> None:
        if self._chunk is None:
            return
        s1, s2 = self._chunk_max
        self._scored += 1
        self._virus += self.rule.chunk_is_virus(s1, s2)
        self._max2 = max(self._max2, s2)
        self._sum2 += s2
        self._chunk = None

    def _end_record(self) -> None:
        if self._record is not None:
            self.write(f"{self._record}\t{self._scored}\t{self._virus}\t{self._max2!r}\t{self._sum2!r}\n")
        self._record, self._scored, self._virus, self._max2, self._sum2 = None, 0, 0, -math.inf, 0.0

    def rows(self) -> Iterator[list[str]]:
        self._end_chunk()
        self._end_record()
        return super().rows()


def _record_and_chunk(frame_id: str) -> tuple[str, int]:
    parsed = record_and_chunk(frame_id)
    if parsed is None:
        raise ValueError(f"frame id {frame_id!r} is not of the form RECORD_chunk_N + frame")
    return parsed


def write_sequence_summary(path: Path, records: RecordIndex, tally: CallTally) -> tuple[CallCounts, bytearray]:
    """prediction_summary.tsv: one row per record of the index, in its order. Returns the
    counts per call and, per record, whether it was called virus (one byte each)."""
    counts = dict.fromkeys(CALLS, 0)
    viral = bytearray()
    scored = tally.rows()
    pending = next(scored, None)
    with atomic_write(path, what=path) as out:
        out.write(SUMMARY_HEADER)
        for record_id, length, chunks in records.rows():
            row = None
            if pending is not None and pending[0] == record_id:
                row, pending = pending, next(scored, None)
            line, call = _summary_line(record_id, int(length), int(chunks), row, tally.rule)
            out.write(line)
            counts[call] += 1
            viral.append(call == "virus")
        if pending is not None:
            raise ValueError(f"scores of {pending[0]!r} match no input record (out of order?)")
    return CallCounts(sum(counts.values()), **counts), viral


def _summary_line(record_id: str, length: int, chunks: int, scored: list[str] | None,
                  rule: CallRule) -> tuple[str, str]:
    if scored is None:
        call = "skipped" if length == 0 else "no_frames"
        return f"{record_id}\t{length}\t{chunks}\t0\t0\tNA\tNA\tNA\t{call}\n", call
    _, n_scored, n_virus, max2, sum2 = scored
    n_scored, n_virus = int(n_scored), int(n_virus)
    fraction = n_virus / n_scored
    call = "virus" if fraction >= rule.min_virus_fraction else "others"
    # Scores in the float32 shortest form prediction_results.txt uses.
    max_text, mean_text = str(np.float32(float(max2))), str(np.float32(float(sum2) / n_scored))
    return (f"{record_id}\t{length}\t{chunks}\t{n_scored}\t{n_virus}\t{fraction:.4f}\t{max_text}\t"
            f"{mean_text}\t{call}\n", call)


def write_viral_fasta(path: Path, source: Path, viral: bytearray) -> int:
    """viral_sequences.fa: the records of `source` marked in `viral` (one flag per record, in
    order), their headers as in the input and their sequences in 60-column lines."""
    written = 0
    with atomic_write(path, what=path) as out:
        for index, record in enumerate(read_records(source)):
            if index < len(viral) and viral[index]:
                out.write(f">{record.title}\n{wrapped(record.seq)}")
                written += 1
    return written


class SequenceCalls:
    """The per-sequence calls of a run, as a context: `index` gets the records as they are
    read, `add` the frame scores in input order, `finish` writes prediction_summary.tsv and
    viral_sequences.fa. The spools are removed whatever happens."""

    def __init__(self, folder: Path, rule: CallRule) -> None:
        self.index = RecordIndex(folder)
        try:
            self.tally = CallTally(folder, rule)
        except BaseException:
            self.index.discard()
            raise

    def add(self, frame_ids: Iterable[str], score1: np.ndarray, score2: np.ndarray) -> None:
        self.tally.add(frame_ids, score1, score2)

    def finish(self, summary: Path, viral_fasta: Path, source: Path) -> CallCounts:
        counts, viral = write_sequence_summary(summary, self.index, self.tally)
        write_viral_fasta(viral_fasta, source, viral)
        return counts

    def __enter__(self) -> "SequenceCalls":
        return self

    def __exit__(self, *exc) -> None:
        self.index.discard()
        self.tally.discard()
