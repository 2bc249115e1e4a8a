"""Read FASTA / FASTQ (plain or gzip) into `Record`s, streaming.

Parsing follows Biopython's `SeqIO.parse(path, "fasta")` (the parser the original tool used),
so the sequences are identical:
- the file is read as UTF-8 text with universal newlines ('\\n', '\\r\\n' and a lone '\\r'
  all end a line);
- a line starting with '>' starts a record; title = rest of the line, trailing whitespace
  removed; id = its first whitespace-delimited word ('' for an empty title);
- every other line is sequence: all lines joined, then every ' ', '\\t', '\\r', '\\n' removed
  (anywhere in the line, not only at the ends); case and all other letters are kept;
- a record without sequence lines is yielded with seq '' (the chunk stage skips it).
Deliberate differences, all of which turn a crash or silent garbage into an `InputError`:
leading blank lines are skipped (Biopython >= 1.85 refuses them), any other leading text
is refused (so is it by Biopython >= 1.85); a sequence may hold only IUPAC nucleotide letters
(A C G T U R Y S W K M B D H V N, either case): anything else -- a protein, FASTQ lines or an
indented header inside a FASTA file, digits, '*', gaps -- is refused naming the record, the
first bad letter's position and its line, where the original would have turned it into
meaningless frames (or crashed).

FASTQ follows Biopython's FastqGeneralIterator: sequence lines up to a '+' line, quality
lines until the quality is as long as the sequence (so a quality line may start with '@').

Every problem raises `InputError` with one line naming the file.
"""

from __future__ import annotations

import array
import gzip
import io
import os
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np

from virnucpro.errors import InputError
from virnucpro.stages.types import Record

_GZIP_MAGIC = b"\x1f\x8b"
# Other compressors we recognise only to say clearly that they are not supported.
_OTHER_MAGIC = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}
_SNIFF_BYTES = 1 << 16
_BUFFER_BYTES = 1 << 20
# Exceptions a corrupt or truncated gzip stream raises while being read.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


# --------------------------------------------------------------------------- opening


def _open_binary(path: Path) -> io.BufferedReader:
    """Open `path` for reading, turning OS errors into one-line InputErrors."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a FASTA/FASTQ file")
    try:
        return open(path, "rb", buffering=_BUFFER_BYTES)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied (cannot read the file)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _decompressed(path: Path, raw: io.BufferedReader) -> io.BufferedReader:
    """Return a buffered byte stream of the file's content, gunzipping by magic bytes."""
    try:
        magic = raw.peek(8)[:8]
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if magic.startswith(_GZIP_MAGIC):
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), _BUFFER_BYTES)
    for prefix, name in _OTHER_MAGIC.items():
        if magic.startswith(prefix):
            raise InputError(f"{path}: {name}-compressed; only plain or gzip input is supported")
    return raw


def _check_text(path: Path, stream: io.BufferedReader) -> None:
    """Refuse binary content early: a NUL byte never occurs in FASTA/FASTQ text."""
    try:
        sample = stream.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
    except _GZIP_ERRORS as exc:
        raise InputError(f"{path}: corrupt gzip data ({exc})") from None
    if b"\x00" in sample:
        raise InputError(f"{path}: binary file, not FASTA/FASTQ text")


class ReadPosition:
    """How far a running `read_records` has got through its file, in bytes of the file as
    stored (compressed bytes for gzip), so progress can show a fraction and an ETA without a
    pre-pass. Ask once per block of records, not per record: each ask is one lseek."""

    def __init__(self, path: str | Path):
        self.total = Path(path).stat().st_size
        self._stream: io.BufferedReader | None = None
        self._last = 0

    def bytes_read(self) -> int:
        if self._stream is not None:
            try:
                self._last = min(self._stream.tell(), self.total)
            except (OSError, ValueError):  # closed or unseekable: keep the last answer
                pass
        return self._last

    def _attach(self, stream: io.BufferedReader) -> None:
        self._stream = stream

    def _finish(self) -> None:
        self._stream = None
        self._last = self.total


@contextmanager
def _open_text(path: Path, position: ReadPosition | None = None) -> Iterator[TextIO]:
    """Yield the file as UTF-8 text with universal newlines (as Biopython reads it).

    Decoding and gzip errors raised while the caller reads are turned into InputErrors here,
    so every parser gets the same messages.
    """
    raw = _open_binary(path)
    if position is not None:
        position._attach(raw)
    try:
        stream = _decompressed(path, raw)
        _check_text(path, stream)
        text = io.TextIOWrapper(stream, encoding="utf-8", newline=None)
        try:
            yield text
        finally:
            text.detach()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text (undecodable bytes; binary file?)") from None
    except _GZIP_ERRORS as exc:
        raise InputError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied while reading") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a FASTA/FASTQ file") from None
    finally:
        if position is not None:
            position._finish()
        raw.close()


def _first_content_line(path: Path, text: TextIO) -> tuple[str | None, int]:
    """Skip leading blank lines; return (first other line or None if empty, its number)."""
    number = 0
    for line in text:
        number += 1
        if line.strip():
            if line[0] not in ">@":
                snippet = line.strip()[:40]
                raise InputError(
                    f"{path}: not FASTA or FASTQ (first non-blank line must start with '>' "
                    f"or '@', found {snippet!r})"
                )
            return line, number
    return None, number


# --------------------------------------------------------------------------- parsing


def _first_word(title: str) -> str:
    """Biopython's record id: first whitespace-delimited word of the title, '' if none."""
    words = title.split(None, 1)
    return words[0] if words else ""


_JUNK = (" ", "\t", "\r", "\n")  # dropped anywhere in a FASTA sequence, as Biopython does
_NOT_NUCLEOTIDE = re.compile(r"[^ACGTURYSWKMBDHVNacgturyswkmbdhvn]")
_HINTS = (  # (letters, what they suggest), for the first bad letter
    ("EFILPQJOXZefilpqjoxz*", "protein letters: virnucpro reads DNA, not protein FASTA"),
    ("@+", "FASTQ lines inside a FASTA file?"),
    (">", "a header that does not start at the beginning of its line (indented?)"),
    ("0123456789", "digits: a numbered (GenBank-style) sequence?"),
    ("-.", "alignment gaps: remove them first"),
)


def _clean_sequence(path: Path, record_id: str, lines: list[str], header_line: int) -> str:
    """Join sequence lines and drop ' ', '\\t', '\\r', '\\n' anywhere (Biopython 'fasta');
    refuse anything but nucleotide letters. header_line: the record's header's line number."""
    seq = "".join(lines)
    # Cheap membership tests first: nearly every file has none of these.
    for junk in _JUNK:
        if junk in seq:
            seq = seq.replace(junk, "")
    if bad := _NOT_NUCLEOTIDE.search(seq):
        line = header_line + 1 + _line_of(lines, bad.start())
        raise InputError(_not_dna(path, record_id, seq, bad.start(), f"line {line}"))
    return seq


def _line_of(lines: list[str], position: int) -> int:
    """Which of the record's sequence lines (0-based) holds cleaned position `position`."""
    seen = 0
    for number, line in enumerate(lines):
        seen += sum(1 for c in line if c not in _JUNK)
        if seen > position:
            return number
    return len(lines) - 1


def _not_dna(path: Path, record_id: str, seq: str, position: int, where: str) -> str:
    letter = seq[position]
    hint = next((what for letters, what in _HINTS if letter in letters),
                "not a letter of a DNA sequence" if letter.isascii() else "a non-ASCII character")
    return (f"{path}: record {record_id!r}: {letter!r} at base {position + 1} ({where}) is not an IUPAC "
            f"nucleotide letter (A C G T U R Y S W K M B D H V N) -- {hint}")


def _record_id(path: Path, title: str, where: str) -> str:
    """The id of a record with this header title; a header without one is refused (every
    result row is named by it)."""
    record_id = _first_word(title)
    if not record_id:
        raise InputError(f"{path}: {where}: a header with no id (nothing after its '>' or '@')")
    return record_id


def _parse_fasta(path: Path, first: str, first_number: int, text: TextIO) -> Iterator[Record]:
    title = first[1:].rstrip()
    header_line = first_number
    lines: list[str] = []
    for number, line in enumerate(text, first_number + 1):
        if line[0] == ">":
            record_id = _record_id(path, title, f"line {header_line}")
            yield Record(record_id, _clean_sequence(path, record_id, lines, header_line), title)
            title = line[1:].rstrip()
            header_line = number
            lines = []
        else:
            lines.append(line)
    record_id = _record_id(path, title, f"line {header_line}")
    yield Record(record_id, _clean_sequence(path, record_id, lines, header_line), title)


class _FastqLines:
    """A line source that counts lines, so FASTQ errors can name the line."""

    def __init__(self, text: TextIO):
        self._text = text
        self.number = 0

    def __iter__(self) -> "_FastqLines":
        return self

    def __next__(self) -> str:
        line = next(self._text)
        self.number += 1
        return line


def _parse_fastq(path: Path, first: str, first_number: int, text: TextIO) -> Iterator[Record]:
    lines = _FastqLines(text)
    lines.number = first_number
    line: str | None = first
    while line is not None:
        if line[0] != "@":
            raise InputError(f"{path}: malformed FASTQ at line {lines.number} (expected '@')")
        title = line[1:].rstrip()
        record_id = _record_id(path, title, f"line {lines.number}")
        seq = _fastq_sequence(path, record_id, title, lines)
        quality_len, line = _fastq_quality(lines, len(seq))
        if quality_len != len(seq):
            truncated = line is None and quality_len < len(seq)
            where = "truncated FASTQ" if truncated else f"malformed FASTQ near line {lines.number}"
            raise InputError(
                f"{path}: {where}: record {record_id!r} has {len(seq)} bases "
                f"but {quality_len} quality values"
            )
        yield Record(record_id, seq, title)


def _fastq_sequence(path: Path, record_id: str, title: str, lines: _FastqLines) -> str:
    """Sequence lines up to the '+' separator (whose optional title must match)."""
    parts: list[str] = []
    for line in lines:
        if line[0] == "+":
            second = line[1:].rstrip()
            if second and second != title:
                raise InputError(
                    f"{path}: malformed FASTQ at line {lines.number}: '+' line does not "
                    f"match the title of record {record_id!r}"
                )
            seq = "".join(parts)
            if " " in seq or "\t" in seq:
                raise InputError(f"{path}: malformed FASTQ: spaces in sequence of {record_id!r}")
            if bad := _NOT_NUCLEOTIDE.search(seq):
                raise InputError(_not_dna(path, record_id, seq, bad.start(), f"in the sequence lines before line {lines.number}"))
            return seq
        parts.append(line.rstrip())
    raise InputError(f"{path}: truncated FASTQ: record {record_id!r} has no '+' line")


def _fastq_quality(lines: _FastqLines, seq_len: int) -> tuple[int, str | None]:
    """Consume quality lines; return (quality length, next record's first line or None).

    A line starting with '@' begins the next record only once the quality is complete,
    because '@' is also a valid quality character.
    """
    quality_len = 0
    for line in lines:
        if line[0] == "@" and quality_len >= seq_len:
            return quality_len, line
        quality_len += len(line.rstrip())
    return quality_len, None


# --------------------------------------------------------------------------- public API


def read_records(path: str | Path, position: ReadPosition | None = None) -> Iterator[Record]:
    """Yield the records of a FASTA or FASTQ file (plain or gzip), in file order.

    Memory stays flat: one record is held at a time. Empty records are yielded (seq '').
    `position`, when given, follows how many bytes of the file have been consumed.
    """
    path = Path(path)
    with _open_text(path, position) as text:
        first, first_number = _first_content_line(path, text)
        if first is None:
            return
        parse = _parse_fasta if first[0] == ">" else _parse_fastq
        yield from parse(path, first, first_number, text)


# Header lines of FASTA: a '>' at the start of a line (after '\n' or a lone '\r').
_FASTA_HEADER = re.compile(rb"(?<=[\r\n])>([^\r\n]*)(?=[\r\n])")
_SCAN_BLOCK = 1 << 24


def _fasta_header_titles(path: Path) -> Iterator[bytes]:
    """Scan a FASTA file in large blocks and yield each header's raw title (no '>').

    Works on bytes with one regular expression per block: far faster than parsing records.
    `carry` keeps what the next block needs: a partial header line, or the line break that
    precedes the block (so a '>' at the block's start is recognised), or one filler byte.
    """
    raw = _open_binary(path)
    try:
        stream = _decompressed(path, raw)
        _check_text(path, stream)
        carry = b"\n"  # the file's start counts as a line start
        while True:
            block = stream.read(_SCAN_BLOCK)
            if not block:
                break
            data = carry + block
            last_break = max(data.rfind(b"\n"), data.rfind(b"\r"))
            if last_break < 0:
                carry = b"x"  # mid-line, and not a header line
                continue
            yield from _FASTA_HEADER.findall(data, 0, last_break + 1)
            rest = data[last_break + 1 :]
            carry = data[last_break:] if (not rest or rest[:1] == b">") else b"x"
        yield from _FASTA_HEADER.findall(carry + b"\n")
    except _GZIP_ERRORS as exc:
        raise InputError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        raw.close()


def _header_ids(path: Path) -> Iterator[str]:
    """Every record id in the file, without building sequences where avoidable."""
    with _open_text(path) as text:
        first, _ = _first_content_line(path, text)
    if first is None:
        return
    if first[0] == "@":  # FASTQ: '@' may start a quality line, so parse properly
        for record in read_records(path):
            yield record.id
        return
    for title in _fasta_header_titles(path):
        try:
            yield _first_word(title.decode("utf-8").rstrip())
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8 text (undecodable header)") from None


@dataclass(frozen=True)
class IdTally:
    """How many records a file has and an order-free digest of their ids (the sum of their
    hashes, mod 2**64): what a second pass must find again if the file did not change."""

    records: int = 0
    digest: int = 0


MASK64 = (1 << 64) - 1


def find_duplicate_ids(path: str | Path) -> tuple[list[str], IdTally]:
    """The ids that occur more than once in the file, sorted (a header-only pre-pass), and
    the tally of all its ids.

    Memory: 8 bytes per record (a hash), not the ids themselves; ids are only kept on a
    second pass, and only those whose hash repeats.
    """
    path = Path(path)
    hashes = array.array("q", (hash(record_id) for record_id in _header_ids(path)))
    values = np.frombuffer(hashes, dtype=np.int64) if len(hashes) else np.empty(0, np.int64)
    tally = IdTally(len(values), int(values.astype(np.uint64).sum(dtype=np.uint64)) & MASK64)
    ordered = np.sort(values)
    repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not repeated:
        return [], tally
    counts: dict[str, int] = {}
    for record_id in _header_ids(path):  # second pass: resolve hash collisions exactly
        if hash(record_id) in repeated:
            counts[record_id] = counts.get(record_id, 0) + 1
    return sorted(record_id for record_id, n in counts.items() if n > 1), tally


SAMPLE_RECORDS = 1_000  # records check_input_opens looks at ...
SAMPLE_BASES = 1_000_000  # ... or fewer, once this many bases are read


def check_input_opens(path: Path) -> list[int]:
    """Input problems that must stop a run before any work or output, the quick ones: the
    file exists and its first records read. (Unique ids: check_unique_ids.) Returns the
    lengths of the first records (SAMPLE_RECORDS, or fewer once SAMPLE_BASES bases are read):
    a glance at what the input holds, for hints, without reading it all again."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    lengths: list[int] = []
    bases = 0
    records = read_records(path)
    try:
        for record in records:
            lengths.append(len(record.seq))
            bases += len(record.seq)
            if len(lengths) >= SAMPLE_RECORDS or bases >= SAMPLE_BASES:
                break
    finally:
        records.close()  # only the first records were needed: release the file now
    if not lengths:
        raise InputError(f"{path}: no sequences in this file (is it empty?)")
    return lengths


def check_unique_ids(path: Path) -> IdTally:
    """A pass over every header of the input (the whole file: seconds per GB); returns the
    tally of its ids, for the check that the file did not change while the run read it."""
    duplicates, tally = find_duplicate_ids(path)
    if duplicates:
        shown = ", ".join(duplicates[:10]) + (" ..." if len(duplicates) > 10 else "")
        raise InputError(
            f"{path}: {len(duplicates)} record id(s) occur more than once ({shown}); "
            "ids (the first word of each header) must be unique"
        )
    return tally


@dataclass(frozen=True)
class InputState:
    """The input as the run found it: the file (device, inode, size, modification time) and
    its ids. Reading it again must find the same, else it changed under the run."""

    stat: tuple[int, int, int, int]
    ids: IdTally

    @staticmethod
    def stat_of(path: Path) -> tuple[int, int, int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def check_unchanged(self, path: Path, seen: IdTally) -> None:
        try:
            now = self.stat_of(path)
        except OSError as exc:
            raise InputError(f"{path} changed while virnucpro was reading it ({exc.strerror or exc} now); "
                             "run again once the file is in place") from None
        if now == self.stat and seen == self.ids:
            return
        what = (f"{self.ids.records:,} records when the run began, {seen.records:,} read now"
                if seen.records != self.ids.records else
                "its record ids differ from those checked at the start" if seen != self.ids else
                f"size {self.stat[2]:,} then {now[2]:,} bytes, or its modification time or inode, changed")
        raise InputError(f"{path} changed while virnucpro was reading it ({what}); if it is still being "
                         "written, wait until it is complete, then run again")
