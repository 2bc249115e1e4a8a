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
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro import __version__
from virnucpro.config import describe_changes, fingerprint_of
from virnucpro.errors import CheckpointMismatch, OutputError
from virnucpro.layout import atomic_write, remove_stale_temporaries, write_bytes_atomic

FORMAT_VERSION = 1


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


class ShardStore:
    def __init__(self, root: Path, fingerprint: str, *, restart: bool = False,
                 parameters: dict | None = None, facts: dict | None = None) -> None:
        """parameters: what the fingerprint hashes (kept to name what differs on a refused
        resume); facts: more to record in a new store's manifest (e.g. the batch size the
        first shards were computed with, for a resume to reuse)."""
        self.root = Path(root)
        self.fingerprint = fingerprint
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

    def shard_path(self, index: int) -> Path:
        return self.root / f"shard_{index:06d}.npz"

    def has(self, index: int) -> bool:
        return self.shard_path(index).is_file()

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

    def load(self, index: int, expected_ids: list[str] | None = None, *,
             need_embeddings: bool = False) -> ShardResult | None:
        """The stored shard, or None when absent, damaged, or not what this run needs (it is
        then deleted and recomputed)."""
        path = self.shard_path(index)
        try:
            with np.load(path, allow_pickle=False) as data:
                ids = data["ids"].tolist()
                result = ShardResult(
                    index, ids, data["score1"], data["score2"],
                    data["dna_embeddings"] if "dna_embeddings" in data else None,
                    data["protein_embeddings"] if "protein_embeddings" in data else None,
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)
            return None
        if not _is_valid(result, expected_ids, need_embeddings):
            path.unlink(missing_ok=True)
            return None
        return result

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
