"""Checkpoint store: one file per finished shard, written atomically, under the output folder.

Layout (`{result_dir}/.virnucpro_store/`):
  manifest.json          format version, fingerprint of input + parameters + models
  shard_000000.npz       ids, score1, score2 (+ embeddings when asked)

A shard file appears only through os.replace of a fully written, fsynced temporary, so a
crash at any moment leaves either the whole shard or none of it: the rename IS the done
marker (temporaries are named `.shard_*.tmp` and removed when the store is reopened). A
separate marker file would add a second fsync per shard and a state (marker without data, or
data without marker) that needs its own recovery, for no extra safety. On resume every shard
is still validated before use -- loadable (the zip's CRCs catch truncation and bit rot), the
expected arrays with matching row counts, and exactly the frame ids the run expects -- and a
shard that fails is deleted and recomputed. A store whose fingerprint differs from the
current run is refused unless the caller asks to restart.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro import __version__
from virnucpro.errors import CheckpointMismatch, OutputError

STORE_DIRNAME = ".virnucpro_store"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShardResult:
    index: int
    ids: list[str]
    score1: np.ndarray  # float32
    score2: np.ndarray  # float32
    dna_embeddings: np.ndarray | None = None
    protein_embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        assert self.score1.shape == (n,) and self.score2.shape == (n,)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(handle) on a temporary beside `path`, fsync it, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ShardStore:
    def __init__(self, result_dir: Path, fingerprint: str, *, restart: bool = False) -> None:
        self.root = result_dir / STORE_DIRNAME
        self.fingerprint = fingerprint
        try:
            self._open(restart)
        except OSError as exc:
            raise OutputError(f"cannot create the checkpoint store {self.root}: {exc.strerror}") from None

    def _open(self, restart: bool) -> None:
        manifest = self.root / "manifest.json"
        if manifest.exists() and not restart:
            found = self._read_manifest(manifest)
            if found.get("fingerprint") != self.fingerprint:
                raise CheckpointMismatch(
                    f"{self.root} holds results of a different run (other input, parameters or "
                    "models); rerun with --restart to discard them, or choose another output folder"
                )
            for stale in self.root.glob(".shard_*.tmp"):  # a crash mid-write leaves these
                stale.unlink(missing_ok=True)
            return
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        payload = {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint,
                   "virnucpro": __version__}
        atomic_write_bytes(manifest, lambda h: h.write(json.dumps(payload, indent=1).encode()))

    def _read_manifest(self, manifest: Path) -> dict:
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointMismatch(f"{manifest} is unreadable ({exc}); rerun with --restart") from None
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            data = migrate_manifest(data, manifest)
        return data

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
        try:
            atomic_write_bytes(self.shard_path(result.index), lambda h: np.savez(h, **arrays))
        except OSError as exc:
            raise OutputError(f"cannot write checkpoint {self.shard_path(result.index)}: "
                              f"{exc.strerror or exc}") from None

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
        except (OSError, ValueError, KeyError, AssertionError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)
            return None
        if not _is_valid(result, expected_ids, need_embeddings):
            path.unlink(missing_ok=True)
            return None
        return result

    def discard(self) -> None:
        """Remove the store once the final result files are safely in place."""
        shutil.rmtree(self.root, ignore_errors=True)


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


def migrate_manifest(data: dict, manifest: Path) -> dict:
    """Hook for reading stores written by older format versions (none exist yet)."""
    raise CheckpointMismatch(
        f"{manifest} has store format {data.get('format_version')!r}, this virnucpro writes "
        f"{FORMAT_VERSION}; rerun with --restart"
    )


class RunLock:
    """One run per output folder: a second run on the same folder would discard or interleave
    the first one's checkpoints. An advisory lock (flock) on `.virnucpro.lock`, released when the
    run ends, also when it is killed (the kernel drops the lock with the process)."""

    NAME = ".virnucpro.lock"

    def __init__(self, result_dir: Path) -> None:
        self.path = result_dir / self.NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
