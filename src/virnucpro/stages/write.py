"""Output files, byte-identical to the original's (SPEC section 5).

- chunk FASTA: Biopython's FASTA writer, `>id` then the sequence in 60-column lines;
- identified nucleotide / protein FASTA: `>id` and the whole sequence on one line;
- `prediction_results.txt`: `Sequence_ID\\tPrediction\\tscore1\\tscore2`, one row per frame in
  input order, scores as str() of numpy float32 (shortest round-trip repr, e.g. `1e-04`);
- `prediction_results_highestscore.csv` (TAB separated): `Modified_ID\\tIs_Virus`, one row per
  chunk (frame id minus its last 2 characters), Is_Virus = max score2 >= max score1 over the
  chunk's frames, rows sorted by Modified_ID as plain strings.

Text handles passed in must be opened for writing text; lines end in '\\n'.
"""

from __future__ import annotations

import heapq
import os
from contextlib import suppress
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

import numpy as np

from virnucpro.errors import OutputError
from virnucpro.layout import HIGHEST_NAME, RESULTS_NAME, chunk_of, open_temp
from virnucpro.stages.types import Chunk, Frame

_LINE_WIDTH = 60  # Biopython's FASTA writer wraps sequences at 60 columns
_WRITE_EVERY = 4096  # records per handle.write call: few, large writes

RESULTS_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
HIGHEST_HEADER = "Modified_ID\tIs_Virus\n"


def _write_in_blocks(handle: IO[str], pieces: Iterable[str]) -> None:
    """Write many small strings with few write calls."""
    block: list[str] = []
    for piece in pieces:
        block.append(piece)
        if len(block) >= _WRITE_EVERY:
            handle.write("".join(block))
            block.clear()
    if block:
        handle.write("".join(block))


def wrapped(seq: str) -> str:
    """A sequence in 60-column lines, each ending in a newline (Biopython's FASTA writer)."""
    return "".join(seq[i : i + _LINE_WIDTH] + "\n" for i in range(0, len(seq), _LINE_WIDTH))


def write_chunks_fasta(chunks: Iterable[Chunk], handle: IO[str]) -> None:
    """Write chunks as the original's `{prefix}_chunked{cs}.fa` (60-column lines)."""
    _write_in_blocks(handle, (f">{chunk.id}\n{wrapped(chunk.seq)}" for chunk in chunks))


def write_frames_fasta(frames: Iterable[Frame], nt_handle: IO[str], aa_handle: IO[str]) -> None:
    """Write kept frames as `identified_nucleotide.fa` and `identified_protein.faa`."""
    nt_block: list[str] = []
    aa_block: list[str] = []
    for frame in frames:
        nt_block.append(f">{frame.id}\n{frame.nt}\n")
        aa_block.append(f">{frame.id}\n{frame.aa}\n")
        if len(nt_block) >= _WRITE_EVERY:
            nt_handle.write("".join(nt_block))
            aa_handle.write("".join(aa_block))
            nt_block.clear()
            aa_block.clear()
    nt_handle.write("".join(nt_block))
    aa_handle.write("".join(aa_block))


# --------------------------------------------------------------------------- result tables


def _as_scores(values, n: int, name: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float32)
    if scores.shape != (n,):
        raise ValueError(f"{name} has shape {scores.shape}, expected ({n},) to match the ids")
    return scores


class _ChunkMaxima:
    """Per-chunk (max score1, max score2), with memory bounded by spilling sorted runs.

    Up to `spill_rows` chunks are held in a dict; beyond that the dict is sorted and written
    to a run file, and the final table is a k-way merge of the runs (equal keys combined by
    max), so any number of chunks fits in flat memory. Scores travel through the run files
    as repr() of Python floats, which round-trips float32 values exactly.
    """

    def __init__(self, work_dir: Path, spill_rows: int):
        self._work_dir = work_dir
        self._spill_rows = spill_rows
        self._current: dict[str, list[float]] = {}
        self._runs: list[Path] = []

    def update(self, keys: list[str], score1: list[float], score2: list[float]) -> None:
        current = self._current
        for key, s1, s2 in zip(keys, score1, score2):
            best = current.get(key)
            if best is None:
                current[key] = [s1, s2]
            else:
                if s1 > best[0]:
                    best[0] = s1
                if s2 > best[1]:
                    best[1] = s2
        if len(current) >= self._spill_rows:
            self._spill()

    def _spill(self) -> None:
        path, run = open_temp(self._work_dir, "highestscore-run")
        self._runs.append(path)
        with run:
            _write_in_blocks(
                run, (f"{k}\t{v[0]!r}\t{v[1]!r}\n" for k, v in sorted(self._current.items()))
            )
        self._current = {}

    @staticmethod
    def _read_run(path: Path) -> Iterator[tuple[str, float, float]]:
        with open(path, encoding="utf-8") as run:
            for line in run:
                key, s1, s2 = line.rstrip("\n").split("\t")
                yield key, float(s1), float(s2)

    def sorted_maxima(self) -> Iterator[tuple[str, float, float]]:
        """(chunk id, max score1, max score2) in string order of the chunk id."""
        in_memory = ((k, v[0], v[1]) for k, v in sorted(self._current.items()))
        if not self._runs:
            yield from in_memory
            return
        streams = [self._read_run(path) for path in self._runs] + [in_memory]
        merged = heapq.merge(*streams, key=lambda row: row[0])
        pending = next(merged, None)
        for row in merged:
            if pending is not None and row[0] == pending[0]:
                pending = (row[0], max(pending[1], row[1]), max(pending[2], row[2]))
            else:
                yield pending
                pending = row
        if pending is not None:
            yield pending

    def discard(self) -> None:
        for path in self._runs:
            with suppress(OSError):
                path.unlink(missing_ok=True)
        self._runs = []
        self._current = {}


class ResultWriter:
    """Stream prediction rows to `prediction_results.txt`, then write the per-chunk table.

    Use as a context manager over the output folder; call `add` in input order. Both files
    are written under temporary names and moved into place (os.replace) only when the block
    ends without an exception; otherwise the temporaries are removed and any earlier result
    files are left untouched. (A crash while the two are moved into place leaves at most the
    table missing, never new results beside an earlier run's table: see close().)
    """

    def __init__(self, out_dir: Path, *, spill_rows: int = 1_000_000):
        self.out_dir = Path(out_dir)
        self._temps: list[Path] = []
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._results_tmp, self._results = self._new_temp(RESULTS_NAME)
            self._results.write(RESULTS_HEADER)
        except OSError as exc:
            self._remove_temps()
            raise OutputError(f"cannot write {self.out_dir / RESULTS_NAME}: {exc.strerror or exc}") from None
        self._maxima = _ChunkMaxima(self.out_dir, spill_rows)
        self._done = False

    def _new_temp(self, final_name: str) -> tuple[Path, IO[str]]:
        path, handle = open_temp(self.out_dir, final_name)
        self._temps.append(path)
        return path, handle

    def add(self, ids: Sequence[str], score1, score2) -> None:
        """Append rows for frames `ids` (input order) with their float32 class scores."""
        if self._done:
            raise RuntimeError("ResultWriter is closed")
        n = len(ids)
        s1 = _as_scores(score1, n, "score1")
        s2 = _as_scores(score2, n, "score2")
        virus = (s2 > s1).tolist()  # argmax with ties going to index 0 ('others')
        text1 = [str(v) for v in s1]  # numpy float32 str(): the original's formatting
        text2 = [str(v) for v in s2]
        rows = (
            f"{fid}\t{'virus' if is_virus else 'others'}\t{a}\t{b}\n"
            for fid, is_virus, a, b in zip(ids, virus, text1, text2)
        )
        try:
            _write_in_blocks(self._results, rows)
            self._maxima.update([chunk_of(fid) for fid in ids], s1.tolist(), s2.tolist())
        except OSError as exc:
            raise OutputError(f"cannot write {self.out_dir / RESULTS_NAME}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Finish both files and move them into place."""
        if self._done:
            return
        try:
            self._results.close()
            highest_tmp, table = self._new_temp(HIGHEST_NAME)
            with table:
                table.write(HIGHEST_HEADER)
                _write_in_blocks(
                    table,
                    (f"{key}\t{m2 >= m1}\n" for key, m1, m2 in self._maxima.sorted_maxima()),
                )
            self._maxima.discard()
            # The two files must never be a mismatched pair (new results beside an earlier
            # run's table): the old table goes first, so a crash between the steps below
            # leaves at most a missing table, which a rerun writes again.
            (self.out_dir / HIGHEST_NAME).unlink(missing_ok=True)
            os.replace(self._results_tmp, self.out_dir / RESULTS_NAME)
            os.replace(highest_tmp, self.out_dir / HIGHEST_NAME)
            self._temps.clear()
            self._done = True
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.out_dir / RESULTS_NAME} and {HIGHEST_NAME}: "
                              f"{exc.strerror or exc}") from None

    def abort(self) -> None:
        """Drop everything written so far; leaves no partial result files."""
        self._done = True
        with suppress(OSError):  # a full disk fails the close too; the first error is the news
            self._results.close()
        self._maxima.discard()
        self._remove_temps()

    def _remove_temps(self) -> None:
        for path in self._temps:
            with suppress(OSError):  # clean-up must not hide the error that caused it
                path.unlink(missing_ok=True)
        self._temps.clear()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class IntermediateFiles:
    """--keep-intermediate: the original's FASTA intermediates (chunks, kept frames'
    nucleotides, their proteins; byte-identical to the original's), written as the frames
    stream by under temporary names and renamed into place only when the run succeeds, so an
    interrupted run never leaves a truncated file that looks whole. `paths`: the three final
    paths (layout.RunLayout.intermediates); None writes nothing."""

    def __init__(self, paths: Sequence[Path] | None) -> None:
        self.paths = list(paths or [])
        self._temps: list[tuple[Path, IO[str]]] = []

    def __enter__(self) -> "IntermediateFiles":
        for path in self.paths:
            try:
                self._temps.append(open_temp(path.parent, path.name))
            except OSError as exc:
                self._close(success=False)
                raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        return self

    def add_chunks(self, chunks: Sequence[Chunk]) -> None:
        if self._temps:
            self._write(self.paths[:1], write_chunks_fasta, chunks, self._temps[0][1])

    def add_frames(self, frames: Sequence[Frame]) -> None:
        if self._temps:
            self._write(self.paths[1:], write_frames_fasta, frames, self._temps[1][1], self._temps[2][1])

    @staticmethod
    def _write(paths: Sequence[Path], write, *args) -> None:
        try:
            write(*args)
        except OSError as exc:
            raise OutputError(f"cannot write {' and '.join(map(str, paths))}: {exc.strerror or exc}") from None

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close(success=exc_type is None)

    def _close(self, success: bool) -> None:
        try:
            for (tmp, handle), path in zip(self._temps, self.paths):
                handle.close()
                if success:
                    os.replace(tmp, path)
        except OSError as exc:
            success = False
            raise OutputError(f"cannot write the intermediate files: {exc.strerror or exc}") from None
        finally:
            if not success:
                for tmp, handle in self._temps:
                    with suppress(OSError):
                        handle.close()
                        tmp.unlink(missing_ok=True)
            self._temps = []
