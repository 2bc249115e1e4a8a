"""Every file and folder a run reads or writes, named once, and the one way they are written.

- Names: the result folder's files, the checkpoint store and lock, the original VirNucPro's
  intermediate files (written with --keep-intermediate, read when reusing its embeddings), and
  the id grammar of chunks and frames (`{record}_chunk_{i}` + F|R + 1..3) the result files use.
- Writing: every file is first written under a temporary name in its final folder,
  `.{name}.{pid}.r{random}.tmp`, created exclusively (never through a link someone planted,
  never a name another process could guess), then renamed into place, so a crash leaves the
  old file or the new one, never half of one. `remove_stale_temporaries` knows that one
  scheme: it removes the temporaries of processes that are gone.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from virnucpro.errors import OutputError

# --------------------------------------------------------------------------- the result folder

STDIN = "-"  # the input argument that reads standard input
STDIN_PREFIX = "stdin"  # ... whose results go to stdin_merged/ (unless -o)
STDIN_LABEL = "standard input"  # ... and what messages, the summary and the report call it
RESULTS_NAME = "prediction_results.txt"  # one row per kept frame (the original's)
HIGHEST_NAME = "prediction_results_highestscore.csv"  # one row per chunk (the original's)
SEQUENCES_NAME = "prediction_summary.tsv"  # one row per input record: its call
VIRAL_FASTA_NAME = "viral_sequences.fa"  # the records called virus
SUMMARY_NAME = "run_summary.json"
REPORT_NAME = "report.html"
PLOT_NAME = "plot.html"  # `virnucpro plot`'s default
METRICS_NAME = "gpu_metrics.jsonl"
EMBEDDINGS_DIRNAME = "embeddings"  # --save-embeddings
STORE_DIRNAME = ".virnucpro_store"  # checkpoint store, removed after a successful run
LOCK_NAME = ".virnucpro.lock"  # held while a run writes to the folder
PART_NAME = "part.json"  # a finished part of a run (predict --part): written last, beside its store

# What each file of the result folder holds, in one line (the CLI's help; the README says more).
OUTPUT_FILES = (  # (* the original VirNucPro's files, byte for byte)
    (SEQUENCES_NAME, "per input sequence: its call and scores"),
    (VIRAL_FASTA_NAME, "the sequences called virus, as in the input"),
    (RESULTS_NAME, "per kept frame: score1 (others), score2 (virus) *"),
    (HIGHEST_NAME, "per chunk: Is_Virus (TAB separated) *"),
    (REPORT_NAME, "the results, then how the run went (opens offline)"),
    (SUMMARY_NAME, "counts, parameters, models, devices, times, warnings"),
    (METRICS_NAME, "GPU samples (GPU runs)"),
)

# Other names than the original's .fa* ones: a .gz, then one of these, is cut off the prefix.
_COMPRESSION_SUFFIXES = (".gz",)
_SEQUENCE_SUFFIXES = (".fastq", ".fq", ".fasta", ".fas", ".fa", ".fna", ".ffn", ".seq", ".txt")


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run on `input` with chunk length `chunk_len`."""

    input: Path
    chunk_len: int
    out_dir: Path | None = None  # None: the original's `{prefix}_merged/`

    @property
    def prefix(self) -> str:
        return output_prefix(self.input)

    @property
    def result_dir(self) -> Path:
        return self.out_dir if self.out_dir is not None else Path(f"{self.prefix}_merged")

    @property
    def store(self) -> Path:
        return self.result_dir / STORE_DIRNAME

    @property
    def lock(self) -> Path:
        return self.result_dir / LOCK_NAME

    def result(self, name: str) -> Path:
        return self.result_dir / name

    def intermediates(self) -> tuple[Path, Path, Path]:
        """--keep-intermediate: the original's chunk FASTA and its kept frames (nucleotide,
        protein), beside its outputs or inside OUTDIR when one is given."""
        return (self._beside(f"_chunked{self.chunk_len}.fa"),
                self._beside("_identified_nucleotide.fa"),
                self._beside("_identified_protein.faa"))

    def _beside(self, suffix: str) -> Path:
        if self.out_dir is None:
            return Path(f"{self.prefix}{suffix}")
        return self.out_dir / f"{Path(self.prefix).name}{suffix}"

    @property
    def original_run(self) -> "OriginalRunFiles":
        return OriginalRunFiles(self.prefix)


def output_prefix(input_path: Path) -> str:
    """What result and intermediate names start with. A FASTA name holding '.fa' (x.fa,
    x.fasta, x.fa.gz): the original's prefix, the input path up to its FIRST '.fa', kept
    exactly (the original's files for it are found by it). Other names (x.fastq, x.fq.gz;
    the original read FASTA only): the path without a .gz and one sequence extension, so
    x.fastq gives x, not the original's 'x.'. Standard input: 'stdin'."""
    text = str(input_path)
    if text == STDIN:
        return STDIN_PREFIX
    if ".fa" in Path(text).name.replace(".fastq", ""):
        return text.split(".fa")[0]
    stem = _without_suffix(text, _COMPRESSION_SUFFIXES)
    return _without_suffix(stem, _SEQUENCE_SUFFIXES)


def _without_suffix(text: str, suffixes: tuple[str, ...]) -> str:
    lowered = text.lower()
    cut = next((s for s in suffixes if lowered.endswith(s) and len(Path(text).name) > len(s)), "")
    return text[: len(text) - len(cut)]


@dataclass(frozen=True)
class OriginalRunFiles:
    """The original VirNucPro's intermediate files for one input prefix (SPEC.md section 5):
    per split k of 10,000 frames, its embeddings and the split's frames."""

    prefix: str

    def merged(self, k: int) -> Path:
        return Path(f"{self.prefix}_merged/output_{k}_merged.pt")

    def dnabert(self, k: int) -> Path:
        return Path(f"{self.prefix}_nucleotide/output_{k}_DNABERT_S.pt")

    def esm(self, k: int) -> Path:
        return Path(f"{self.prefix}_protein/output_{k}_ESM.pt")

    def split_fasta(self, k: int) -> Path:
        """One-line FASTA of split k's frames (their nucleotide sequences)."""
        return Path(f"{self.prefix}_nucleotide/output_{k}.fa")

    @property
    def identified_fasta(self) -> Path:
        """One-line FASTA of all kept frames, before splitting."""
        return Path(f"{self.prefix}_identified_nucleotide.fa")

    def embeddings(self, k: int) -> tuple[Path, Path, Path]:
        return self.merged(k), self.dnabert(k), self.esm(k)

    def exists(self) -> bool:
        return any(p.is_file() for p in self.embeddings(1))


# --------------------------------------------------------------------------- ids and chunks

def chunk_name(record_id: str, number: int) -> str:
    """Chunk `number` (from 1) of a record: `{record}_chunk_{number}`."""
    return f"{record_id}_chunk_{number}"


def chunk_of(frame_id: str) -> str:
    """The chunk a frame belongs to: its id without the frame suffix (F1..R3)."""
    return frame_id[:-2]


def record_and_chunk(frame_id: str) -> tuple[str, int] | None:
    """'read7_chunk_12R2' -> ('read7', 12); None for ids not in the chunk form."""
    record, sep, rest = chunk_of(frame_id).rpartition("_chunk_")
    return (record, int(rest)) if sep and rest.isdigit() else None


def chunk_starts(length: int, chunk_len: int) -> list[int]:
    """Start offsets of the chunks of a sequence of `length` bases ([] when length is 0),
    as the original cuts them (SPEC 1; stages/chunk.py cuts, the report draws them):
        n = ceil(L / cs); R = n*cs - L; lo = R // n; up = lo + 1
        need = R - lo*(n-1); gaps = [up]*need + [lo]*(n-1-need)
        chunk i starts at i*cs - sum(gaps[:i]) (and is clipped at L)"""
    if chunk_len <= 0:
        raise ValueError(f"chunk length must be positive, got {chunk_len}")
    if length <= 0:
        return []
    n = -(-length // chunk_len)  # ceil without floats
    remainder = n * chunk_len - length
    lo = remainder // n
    up = lo + 1
    need = remainder - lo * (n - 1)
    # sum(gaps[:i]) in closed form: the first `need` gaps are `up`, the rest `lo`.
    return [i * chunk_len - (up * min(i, need) + lo * max(0, i - need)) for i in range(n)]


def chunk_spans(length: int, chunk_len: int) -> list[tuple[int, int]]:
    """(start, end) in bases of each chunk of a sequence of `length` bases."""
    return [(start, min(start + chunk_len, length)) for start in chunk_starts(length, chunk_len)]


def chunk_is_virus(max_score1: float, max_score2: float, threshold: float | None = None) -> bool:
    """A chunk's call from its frames' best scores: the original's Is_Virus (max score2 >=
    max score1), or max score2 >= `threshold` when one is set (--threshold)."""
    if threshold is None:
        return max_score2 >= max_score1
    return max_score2 >= threshold


# --------------------------------------------------------------------------- writing

_TEMP_SUFFIX = ".tmp"
_OUR_TEMP = re.compile(r"^\..+\.(\d+)\.r[0-9a-f]{12}\.tmp$")  # what _temp_name makes


def _temp_name(name: str) -> str:
    # The pid is the name's only all-digit part (the random part starts with 'r'), so the
    # clean-up can tell a live run's temporaries from a killed one's.
    return f".{name}.{os.getpid()}.r{secrets.token_hex(6)}{_TEMP_SUFFIX}"


def open_temp(folder: Path, name: str, *, text: bool = True) -> tuple[Path, IO]:
    """A new, empty temporary for final file `name` in `folder`, open for writing. Created
    with O_EXCL | O_NOFOLLOW, so it is never an existing file or a planted link; the umask
    applies (unlike mkstemp's 0600), so the renamed file gets the usual permissions."""
    path = Path(folder) / _temp_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o666)
    try:
        handle = os.fdopen(fd, "w", encoding="utf-8", newline="\n") if text else os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return path, handle


def open_new(path: Path) -> IO[str]:
    """`path` open for writing as a new file, for files written as they grow (a log that is
    useful while a run goes on): whatever is there is removed first (a link, not what it points
    to), then the file is created exclusively, never through a link."""
    path = Path(path)
    if path.is_symlink() or path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    return os.fdopen(fd, "w", encoding="utf-8", newline="\n")


def new_temp_folder(folder: Path, name: str) -> Path:
    """A new, empty temporary folder for final folder `name` in `folder` (mkdir never
    follows or reuses an existing entry)."""
    path = Path(folder) / _temp_name(name)
    path.mkdir()
    return path


def fsync_folder(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Path, *, text: bool = True, fsync: bool = True,
                 what: str | None = None) -> Iterator[IO]:
    """Write `path` through a temporary beside it, renamed into place when the block ends
    without an exception (fsync'd first when `fsync`). On any failure the temporary is
    removed and an earlier `path` stays as it was; an OSError becomes an OutputError naming
    `what` (default: the path)."""
    path = Path(path)
    tmp: Path | None = None
    try:
        tmp, handle = open_temp(path.parent, path.name, text=text)
        with handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        if fsync:
            fsync_folder(path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {what or path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            with suppress(OSError):  # a failing clean-up must not hide the first error
                tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes, *, what: str | None = None) -> None:
    with atomic_write(path, text=False, what=what) as handle:
        handle.write(data)


def write_text_atomic(path: Path, text: str, *, what: str | None = None, fsync: bool = True) -> None:
    with atomic_write(path, fsync=fsync, what=what) as handle:
        handle.write(text)


def replace_folder(tmp: Path, final: Path) -> None:
    """Put finished temporary folder `tmp` in the place of `final` (whatever is there: an
    earlier folder, a file, a link)."""
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)


def prepare_result_dir(path: Path) -> bool:
    """Create the output folder and check it takes files; True when we created it (so a
    failed run may remove it again)."""
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe, handle = open_temp(path, "write-test")
        handle.close()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    return not existed


def remove_created_folder(path: Path, created: bool) -> None:
    """Remove the output folder a failed run created, if nothing is in it."""
    with suppress(OSError):
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def remove_quietly(path: Path) -> None:
    """Remove a file or folder if it is there; errors are ignored (used while cleaning up
    after another error, which must stay the one reported)."""
    with suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, *, all_of_them: bool = False) -> None:
    """Remove the temporaries (files or folders) that killed processes left in `folder`;
    those of live processes stay, unless `all_of_them` (a folder only the caller writes to,
    such as the checkpoint store under the run's lock)."""
    for path in Path(folder).glob(f".*{_TEMP_SUFFIX}"):
        ours = _OUR_TEMP.match(path.name)  # another program's temporaries are not ours to judge
        if all_of_them or (ours and not _process_alive(int(ours.group(1)))):
            remove_quietly(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
