"""Per-sequence calls: one verdict per input record, from its chunks' scores.

The original stops at per-frame rows and per-chunk True/False; users want one row per input
sequence and the hits as FASTA. Both are written as the run goes, from two streams in input
order: every record as it is read (kept until its verdict is known), and the frames' scores
as the shard results arrive, folded per chunk (max score1, max score2 over its frames) and per
record. A record's row -- and its FASTA entry, if it is called virus -- is written once its
last chunk's scores are in, so nothing is left to do after the last shard (no second pass
over the input while the GPUs idle), and memory holds only the records between the results
and the reading. A chunk counts as virus by the original's rule
(its max score2 >= its max score1) or, with a threshold T, when its max score2 >= T; a record
is called virus when its share of virus chunks reaches the minimum fraction.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro.errors import OutputError
from virnucpro.layout import SEQUENCES_NAME, VIRAL_FASTA_NAME, chunk_is_virus, open_temp, record_and_chunk
from virnucpro.stages.types import Record
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


class SequenceCalls:
    """The per-sequence calls of a run, as a context over the result folder: `index.add` gets
    each record as it is read, `add_scores` the frame scores in input
    order, `finish` completes prediction_summary.tsv and viral_sequences.fa and puts them in
    place. Written under temporary names; removed if the run fails."""

    def __init__(self, folder: Path, rule: CallRule) -> None:
        self.rule = rule
        self.index = self  # what the frame stream reports every record to
        self._temps: list[tuple[Path, object]] = []
        try:
            for name in (SEQUENCES_NAME, VIRAL_FASTA_NAME):
                self._temps.append(open_temp(folder, name))
        except OSError as exc:
            self._discard()
            raise OutputError(f"cannot write in {folder}: {exc.strerror or exc}") from None
        self._pending: deque[tuple[Record, int]] = deque()  # read, verdict not yet known
        self._counts = dict.fromkeys(CALLS, 0)
        self._rows: list[str] = [SUMMARY_HEADER]
        self._fasta: list[str] = []
        self._record: str | None = None  # the record and chunk whose frames are being folded
        self._chunk: int | None = None
        self._chunk_max = [0.0, 0.0]
        self._scored = self._virus = 0
        self._max2 = -math.inf
        self._sum2 = 0.0

    def add(self, record: Record, chunks: int) -> None:
        """A record as it is read, with its number of chunks (the frame stream's index)."""
        self._pending.append((record, chunks))

    def add_scores(self, frame_ids: Iterable[str], score1: np.ndarray, score2: np.ndarray) -> None:
        """Scores of frames, in input order (a shard's, as it arrives)."""
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
        self._flush()

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
            self._write_up_to(self._record, (self._scored, self._virus, self._max2, self._sum2))
        self._record, self._scored, self._virus, self._max2, self._sum2 = None, 0, 0, -math.inf, 0.0

    def _write_up_to(self, record_id: str | None, scored: tuple | None) -> None:
        """Rows of the pending records up to `record_id` (which gets `scored`); those before
        it had no kept frame. None: every pending record."""
        while self._pending:
            record, chunks = self._pending.popleft()
            ours = record.id == record_id
            line, call = _summary_line(record.id, len(record.seq), chunks, scored if ours else None, self.rule)
            self._rows.append(line)
            self._counts[call] += 1
            if call == "virus":
                self._fasta.append(f">{record.title}\n{wrapped(record.seq)}")
            if ours:
                return
        if record_id is not None:
            raise ValueError(f"scores of {record_id!r} match no input record read (out of order?)")

    def _flush(self) -> None:
        for (path, handle), lines in zip(self._temps, (self._rows, self._fasta)):
            try:
                handle.write("".join(lines))
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
            lines.clear()

    def finish(self, summary: Path, viral_fasta: Path) -> CallCounts:
        """The last records' rows (after the last scored one, none had a kept frame), then both
        files into place."""
        self._end_chunk()
        self._end_record()
        self._write_up_to(None, None)
        self._flush()
        try:
            for (temp, handle), final in zip(self._temps, (summary, viral_fasta)):
                handle.close()
                os.replace(temp, final)
        except OSError as exc:
            raise OutputError(f"cannot write {summary} and {viral_fasta}: {exc.strerror or exc}") from None
        self._temps = []
        return CallCounts(sum(self._counts.values()), **self._counts)

    def _discard(self) -> None:
        for path, handle in self._temps:
            with suppress(OSError):
                handle.close()
            with suppress(OSError):
                path.unlink(missing_ok=True)
        self._temps = []

    def __enter__(self) -> "SequenceCalls":
        return self

    def __exit__(self, *exc) -> None:
        self._discard()  # nothing left after finish; the temporaries after a failure


def _record_and_chunk(frame_id: str) -> tuple[str, int]:
    parsed = record_and_chunk(frame_id)
    if parsed is None:
        raise ValueError(f"frame id {frame_id!r} is not of the form RECORD_chunk_N + frame")
    return parsed


def _summary_line(record_id: str, length: int, chunks: int, scored: tuple | None,
                  rule: CallRule) -> tuple[str, str]:
    if scored is None:
        call = "skipped" if length == 0 else "no_frames"
        return f"{record_id}\t{length}\t{chunks}\t0\t0\tNA\tNA\tNA\t{call}\n", call
    n_scored, n_virus, max2, sum2 = scored
    fraction = n_virus / n_scored
    call = "virus" if fraction >= rule.min_virus_fraction else "others"
    # Scores in the float32 shortest form prediction_results.txt uses.
    max_text, mean_text = str(np.float32(max2)), str(np.float32(sum2 / n_scored))
    return (f"{record_id}\t{length}\t{chunks}\t{n_scored}\t{n_virus}\t{fraction:.4f}\t{max_text}\t"
            f"{mean_text}\t{call}\n", call)
