"""Checkpoint store: one file per finished shard, written atomically, under the output folder.

Layout (`{result_dir}/.virnucpro_store/`):
  manifest.json          format version, fingerprint of input + parameters + models
  shard_000000.npz       ids, score1, score2 (+ embeddings when asked)

A shard file appears only through os.replace of a fully written, fsynced temporary
(layout.atomic_write), so a crash at any moment leaves either the whole shard or none of it:
the rename IS the done marker (temporaries of killed runs are removed when the store is
reopened). A
separate marker file would add a second fsync per shard and a state (marker without data, or
data without marker) that needs its own recovery, for no extra safety. On resume every shard
is still validated before use -- loadable (the zip's CRCs catch truncation and bit rot), the
expected arrays with matching row counts, and exactly the frame ids the run expects -- and a
shard that fails is deleted and recomputed. A store whose fingerprint differs from the
current run is refused unless the caller asks to restart.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import threading
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from virnucpro import __version__
from virnucpro.config import describe_changes, file_identity, fingerprint_of
from virnucpro.errors import CheckpointMismatch, InputError, OutputError
from virnucpro.layout import (
    PART_NAME,
    STORE_DIRNAME,
    atomic_write,
    remove_stale_temporaries,
    write_bytes_atomic,
    write_text_atomic,
)

FORMAT_VERSION = 1
SAVES_IN_FLIGHT = 4  # shard results waiting for the writer thread before the engine waits too


@dataclass(frozen=True)
class ShardResult:
    index: int
    ids: list[str]
    score1: np.ndarray  # float32
    score2: np.ndarray  # float32
    dna_embeddings: np.ndarray | None = None
    protein_embeddings: np.ndarray | None = None
    # How it was computed, for the run's account (not stored: a resumed shard reports zeros).
    reused: int = 0  # frames whose embeddings came from the original VirNucPro's files
    batches_halved: int = 0  # batches split after running out of device memory
    redone_in_fp32: bool = False  # DNABERT-S overflowed fp16 and was rerun in fp32

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.score1.shape != (n,) or self.score2.shape != (n,):
            raise ValueError(f"shard {self.index}: {n} ids but scores of shapes "
                             f"{self.score1.shape} and {self.score2.shape}")


MANIFEST_NAME = "manifest.json"


def resumable(root: Path, parameters: dict, *, restart: bool = False) -> dict | None:
    """The manifest of the store at `root` when a run with these fingerprint parameters may
    resume from it; None when there is none (or `restart`). A store of another run is refused,
    naming what differs -- a check that needs no model loaded."""
    manifest = Path(root) / MANIFEST_NAME
    if restart or not manifest.exists():
        return None
    found = _read_manifest(manifest)
    if found.get("fingerprint") != fingerprint_of(parameters):
        changes = (describe_changes(found["parameters"], parameters) if "parameters" in found
                   else ["it was written by an earlier virnucpro version"])
        raise CheckpointMismatch(
            f"{root} holds results of a different run ({'; '.join(changes) or 'other parameters'}); "
            "rerun with --restart to discard them, or choose another output folder")
    return found


class ShardFiles:
    """The shard files of a store, read only: what a merge reads from each part's store
    without taking it over (no clean-up, nothing deleted)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def shard_path(self, index: int) -> Path:
        return self.root / f"shard_{index:06d}.npz"

    def has(self, index: int) -> bool:
        return self.shard_path(index).is_file()

    def load(self, index: int, expected_ids: list[str] | None = None, *,
             need_embeddings: bool = False, discard_bad: bool = False) -> ShardResult | None:
        """The stored shard, or None when absent, damaged, or not what this run needs
        (`discard_bad`: then deleted, for the run to recompute it)."""
        path = self.shard_path(index)
        try:
            with np.load(path, allow_pickle=False) as data:
                ids = data["ids"].tolist()
                result = ShardResult(
                    index, ids, data["score1"], data["score2"],
                    data["dna_embeddings"] if "dna_embeddings" in data else None,  # noqa: SIM401 - NpzFile
                    data["protein_embeddings"] if "protein_embeddings" in data else None,  # noqa: SIM401
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            result = None
        if result is None or not _is_valid(result, expected_ids, need_embeddings):
            if discard_bad:
                path.unlink(missing_ok=True)
            return None
        return result


class ShardStore(ShardFiles):
    def __init__(self, root: Path, fingerprint: str, *, restart: bool = False,
                 parameters: dict | None = None, facts: dict | None = None) -> None:
        """parameters: what the fingerprint hashes (kept to name what differs on a refused
        resume); facts: more to record in a new store's manifest (e.g. the batch size the
        first shards were computed with, for a resume to reuse)."""
        super().__init__(root)
        self.fingerprint = fingerprint
        self._writer: threading.Thread | None = None  # saves shards off the engine's loop
        self._queue: queue.Queue = queue.Queue(maxsize=SAVES_IN_FLIGHT)
        self._failure: BaseException | None = None
        self._recorded = {"parameters": parameters} if parameters is not None else {}
        self._recorded.update(facts or {})
        try:
            self._open(restart)
        except OSError as exc:
            raise OutputError(f"cannot create the checkpoint store {self.root}: {exc.strerror}") from None

    def _open(self, restart: bool) -> None:
        manifest = self.root / MANIFEST_NAME
        if manifest.exists() and not restart:
            found = _read_manifest(manifest)
            if found.get("fingerprint") != self.fingerprint:
                raise CheckpointMismatch(
                    f"{self.root} holds results of a different run (other input, parameters or "
                    "models); rerun with --restart to discard them, or choose another output folder"
                )
            remove_stale_temporaries(self.root, all_of_them=True)  # a crash mid-write leaves these
            return
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        payload = {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint,
                   "virnucpro": __version__, **self._recorded}
        write_bytes_atomic(manifest, json.dumps(payload, indent=1).encode())

    def save(self, result: ShardResult) -> None:
        arrays = {
            "ids": np.asarray(result.ids, dtype=np.str_),
            "score1": result.score1.astype(np.float32, copy=False),
            "score2": result.score2.astype(np.float32, copy=False),
        }
        if result.dna_embeddings is not None:
            arrays["dna_embeddings"] = result.dna_embeddings
            arrays["protein_embeddings"] = result.protein_embeddings
        path = self.shard_path(result.index)
        with atomic_write(path, text=False, what=f"checkpoint {path}") as handle:
            np.savez(handle, **arrays)

    def save_later(self, result: ShardResult) -> None:
        """Save `result` on the store's own writer thread, so the caller (the engine's loop,
        handing out jobs to every device) does not wait on the disk; at most SAVES_IN_FLIGHT
        wait their turn. A failure of an earlier save is raised here, or by close()."""
        self._raise_failure()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_queued, name="store-writer", daemon=True)
            self._writer.start()
        self._queue.put(result)

    def _write_queued(self) -> None:
        while (result := self._queue.get()) is not None:
            try:
                if self._failure is None:
                    self.save(result)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._failure = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def close(self) -> None:
        """Wait until every queued shard is written; raise the first failure."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self._raise_failure()

    def load(self, index: int, expected_ids: list[str] | None = None, *,
             need_embeddings: bool = False, discard_bad: bool = True) -> ShardResult | None:
        """As ShardFiles.load, but a shard this run cannot use is deleted by default: the
        run recomputes it."""
        return super().load(index, expected_ids, need_embeddings=need_embeddings, discard_bad=discard_bad)

    def discard(self) -> None:
        """Remove the store once the final result files are safely in place."""
        shutil.rmtree(self.root, ignore_errors=True)


def _read_manifest(manifest: Path) -> dict:
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointMismatch(f"{manifest} is unreadable ({exc}); rerun with --restart") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:  # none older exists yet
        version = data.get("format_version") if isinstance(data, dict) else None
        raise CheckpointMismatch(
            f"{manifest} has store format {version!r}, this virnucpro writes {FORMAT_VERSION}; rerun with --restart")
    return data


def _is_valid(result: ShardResult, expected_ids: list[str] | None, need_embeddings: bool) -> bool:
    n = len(result.ids)
    if expected_ids is not None and result.ids != expected_ids:
        return False
    if result.score1.dtype != np.float32 or result.score2.dtype != np.float32:
        return False
    if result.dna_embeddings is None or result.protein_embeddings is None:
        return not need_embeddings
    return (result.dna_embeddings.ndim == 2 and result.protein_embeddings.ndim == 2
            and result.dna_embeddings.shape[0] == n and result.protein_embeddings.shape[0] == n)


class RunLock:
    """One run per output folder: a second run on the same folder would discard or interleave
    the first one's checkpoints. An advisory lock (flock) on `.virnucpro.lock`, released when the
    run ends, also when it is killed (the kernel drops the lock with the process)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:  # never through a planted link
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise OutputError(f"another virnucpro run is writing to {self.path.parent}; wait for it "
                              "to finish or choose another output folder (-o)") from None
        except OSError:
            pass  # a file system without locks (some network mounts): run unguarded
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------- parts of a run

PART_FORMAT = 1


@dataclass(frozen=True)
class PartRecord:
    """part.json: a finished part of a run (predict --part K/N), beside the store that keeps
    its shards. Written last, once every shard of the part is stored, so its presence marks the
    part finished; a part run removes it first thing."""

    k: int
    n: int
    input: str  # the input's path: the merge reads it again (record index, viral FASTA)
    parameters: dict  # the run's fingerprint parameters: input identity, chunk length, models, precision, batch and shard settings
    batch_tokens: int  # the batch budget the devices used (their own choice unless --batch-tokens)
    device_kind: str  # "cpu" or "cuda": they round differently (on the CPU, so do thread counts: in `parameters`)
    dtype: str
    feature_dims: list[int]  # DNABERT-S and ESM-2 widths
    demo_models: list[str]
    embeddings: bool  # its shards hold the embeddings (--save-embeddings)
    shards: int  # of the whole run (every part streams the whole input)
    frames: int  # of the whole run
    chunks: int  # of the whole input
    records: int  # of the whole input
    part_shards: int
    part_frames: int
    part_tokens: int
    part_chunks: int  # chunks with a frame in this part (a chunk's frames may straddle two parts)

    @property
    def name(self) -> str:
        return f"part {self.k}/{self.n}"

    def shard_indices(self) -> range:
        return range(self.k - 1, self.shards, self.n)

    def save(self, folder: Path) -> None:
        payload = {"format_version": PART_FORMAT, "virnucpro": __version__,
                   "fingerprint": fingerprint_of(self.parameters), **asdict(self)}
        write_text_atomic(Path(folder) / PART_NAME, json.dumps(payload, indent=1) + "\n")


def read_part(folder: Path) -> PartRecord:
    """The part record in `folder`; InputError when there is none (an unfinished part, or not
    a part folder) or it cannot be read."""
    folder = Path(folder)
    path = folder / PART_NAME
    if not folder.is_dir():
        raise InputError(f"{folder}: no such part folder")
    if not path.is_file():
        why = ("the part has not finished: rerun its `virnucpro predict --part` command, which resumes"
               if (folder / STORE_DIRNAME).is_dir() else "not a part folder of `virnucpro predict --part`")
        raise InputError(f"{folder}: no {PART_NAME}: {why}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        record = PartRecord(**{f.name: data[f.name] for f in fields(PartRecord)})
        sound = (data.get("format_version") == PART_FORMAT
                 and data.get("fingerprint") == fingerprint_of(record.parameters))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        sound = False
    if not sound:
        raise InputError(f"{path} is damaged or was written by another virnucpro version; rerun that part "
                         "with --restart")
    return record


class PartSet:
    """The N parts of one run as a merge reads them: given in any order, checked to fit
    together before anything is written (else InputError, naming the parts and what differs),
    then read shard by shard, in the order of the run's shard plan, from the part that holds
    each shard."""

    def __init__(self, folders: list[Path]) -> None:
        parts = _one_of_each(sorted(((Path(f), read_part(Path(f))) for f in folders), key=lambda p: p[1].k))
        for other in parts[1:]:
            _check_same_run(parts[0], other)
        _check_totals(parts)
        self.record = parts[0][1]
        _check_input(self.record)
        self.folders = [folder for folder, _ in parts]
        self.records = [record for _, record in parts]
        self._files = [ShardFiles(folder / STORE_DIRNAME) for folder in self.folders]
        for folder, record, files in zip(self.folders, self.records, self._files):
            if missing := [i for i in record.shard_indices() if not files.has(i)]:
                raise InputError(f"{folder} ({record.name}): shard {missing[0]} of its store is missing; "
                                 "rerun that part (it recomputes what is missing)")

    def shard_path(self, index: int) -> Path:
        return self._files[index % self.record.n].shard_path(index)

    def load(self, index: int, expected_ids: list[str] | None = None, *,
             need_embeddings: bool = False) -> ShardResult | None:
        """Shard `index` from the part that holds it; None when damaged or not the frames
        expected (the part's files are left as they are)."""
        return self._files[index % self.record.n].load(index, expected_ids, need_embeddings=need_embeddings)

    def folder_of(self, index: int) -> Path:
        return self.folders[index % self.record.n]


def _one_of_each(parts: list[tuple[Path, PartRecord]]) -> list[tuple[Path, PartRecord]]:
    """Parts 1..N, each once, all cut for the same N."""
    first_folder, first = parts[0]
    for folder, record in parts:
        if record.n != first.n:
            raise InputError(f"{first_folder} is {first.name} but {folder} is {record.name}: "
                             "parts cut for different N do not merge")
    seen: dict[int, Path] = {}
    for folder, record in parts:
        if record.k in seen:
            same = seen[record.k].resolve() == folder.resolve()
            raise InputError(f"{record.name} is given twice: {seen[record.k]} and {folder}"
                             + (" are the same folder" if same else ""))
        seen[record.k] = folder
    if missing := [str(k) for k in range(1, first.n + 1) if k not in seen]:
        raise InputError(f"part(s) {', '.join(missing)} of {first.n} missing: a merge needs every part of the run")
    return parts


def _check_same_run(a: tuple[Path, PartRecord], b: tuple[Path, PartRecord]) -> None:
    (folder_a, first), (folder_b, other) = a, b
    labels = (f"in {first.name}", f"in {other.name}")
    changes = describe_changes(first.parameters, other.parameters, labels)
    if first.batch_tokens != other.batch_tokens:
        changes.append(f"batches of {first.batch_tokens} tokens {labels[0]}, {other.batch_tokens} {labels[1]} "
                       "(the devices chose them; recompute with --batch-tokens to pin one)")
    if first.device_kind != other.device_kind:
        changes.append(f"computed on {first.device_kind} {labels[0]}, {other.device_kind} {labels[1]} "
                       "(they round differently)")
    if changes:
        raise InputError(f"{folder_a} and {folder_b} are parts of different runs: {'; '.join(changes)}")


def _check_totals(parts: list[tuple[Path, PartRecord]]) -> None:
    """Every part saw the same whole input; together they hold all of it."""
    first = parts[0][1]
    whole = ("shards", "frames", "chunks", "records")
    for folder, record in parts:
        if any(getattr(record, key) != getattr(first, key) for key in whole):
            raise InputError(f"{folder} ({record.name}) saw another input than {parts[0][0]}: "
                             + ", ".join(f"{key} {getattr(record, key)} against {getattr(first, key)}" for key in whole))
    held = sum(record.part_frames for _, record in parts), sum(record.part_shards for _, record in parts)
    if held != (first.frames, first.shards):
        raise InputError(f"the parts hold {held[0]} frames in {held[1]} shards, the run has {first.frames} "
                         f"in {first.shards}: rerun the parts with --restart")


def _check_input(record: PartRecord) -> None:
    """The input is still the one the parts were computed from (the merge reads it again)."""
    path = Path(record.input)
    if not path.is_file():
        raise InputError(f"the parts' input {path} is not there any more: the merge reads it again")
    now = file_identity(path)
    if now != record.parameters["input"]:
        change = describe_changes({"input": record.parameters["input"]}, {"input": now},
                                  ("when the parts were computed", "now"))
        raise InputError(f"{path}: {change[0]}; recompute the parts")
