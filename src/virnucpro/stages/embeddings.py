"""--save-embeddings: per-frame embeddings as plain NumPy files anyone can read.

`{result_dir}/embeddings/`:
  ids.txt         one frame id per line, the rows of prediction_results.txt in the same order
  dnabert_s.npy   float32 [N, 768]   (np.load(path, mmap_mode="r") reads it without loading it)
  esm2.npy        float32 [N, 2560]
Built after the run from the checkpoint store's shards, in shard (= input) order, through
memory-mapped output arrays, so memory stays flat. Each shard's ids must be those of the next
rows of prediction_results.txt (read alongside); a shard that is missing, damaged or holds
other frames stops the export with CheckpointMismatch naming its file. The folder is built
under a temporary name and appears only when complete: any failure removes it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from virnucpro.errors import CheckpointMismatch, OutputError
from virnucpro.layout import EMBEDDINGS_DIRNAME, RESULTS_NAME, new_temp_folder, remove_quietly, replace_folder
from virnucpro.store import PartSet, ShardFiles


def write_embeddings(result_dir: Path, store: ShardFiles | PartSet, shard_count: int, frames: int,
                     dims: tuple[int, int]) -> Path:
    """Collect the store's shards 0..shard_count-1 into result_dir/embeddings/ (`store`: a
    run's checkpoint store, or the parts of a merge, which read alike). Raises
    CheckpointMismatch for a shard that cannot be used, OutputError when the folder cannot
    be written."""
    final = result_dir / EMBEDDINGS_DIRNAME
    partial: Path | None = None
    try:
        partial = new_temp_folder(result_dir, EMBEDDINGS_DIRNAME)
        _fill(partial, result_dir, store, shard_count, frames, dims)
        replace_folder(partial, final)
        partial = None
    except OSError as exc:
        raise OutputError(f"cannot write the embeddings to {final}: {exc.strerror or exc}") from None
    finally:
        if partial is not None:
            remove_quietly(partial)
    return final


def _fill(partial: Path, result_dir: Path, store: ShardFiles | PartSet, shard_count: int, frames: int,
          dims: tuple[int, int]) -> None:
    dna = _output_array(partial / "dnabert_s.npy", (frames, dims[0]))
    protein = _output_array(partial / "esm2.npy", (frames, dims[1]))
    results = result_dir / RESULTS_NAME
    with open(partial / "ids.txt", "w", encoding="utf-8", newline="\n") as ids, \
            _result_ids(results) as expected_rows:
        row = 0
        for index in range(shard_count):
            path = store.shard_path(index)
            shard = store.load(index, need_embeddings=True)
            if shard is None or shard.dna_embeddings is None or shard.protein_embeddings is None:
                raise CheckpointMismatch(
                    f"{path}: checkpoint shard missing, damaged, or without this run's frames and "
                    "embeddings; rerun (with --restart if need be) to recompute it")
            n = len(shard.ids)
            expected = list(itertools.islice(expected_rows, n))
            if shard.ids != expected:
                at = next(r for r, (a, b) in enumerate(itertools.zip_longest(shard.ids, expected)) if a != b)
                raise CheckpointMismatch(
                    f"{path}: its frames are not the rows of {results} (frame {at + 1} of the shard is "
                    f"{_at(shard.ids, at)}, the results have {_at(expected, at)}); rerun with --restart")
            if row + n > frames:
                raise CheckpointMismatch(f"{path}: the shards hold more than the {frames} frames of this run")
            dna[row:row + n] = shard.dna_embeddings
            protein[row:row + n] = shard.protein_embeddings
            ids.write("".join(f"{i}\n" for i in shard.ids))
            row += n
        if row != frames or next(expected_rows, None) is not None:
            raise CheckpointMismatch(
                f"{store.root}: the shards hold {row} frames, this run has {frames}"
                + (f" ({results} has more rows)" if row == frames else ""))
    for array in (dna, protein):
        if isinstance(array, np.memmap):
            array.flush()


def _at(ids: list[str], row: int) -> str:
    return ids[row] if row < len(ids) else "nothing"


@contextlib.contextmanager
def _result_ids(path: Path) -> Iterator[Iterator[str]]:
    """The frame ids of prediction_results.txt, in row order."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointMismatch(f"{path} is missing: the embeddings cannot be matched to the results") from None
    with handle:
        next(handle, None)  # header
        yield (line.split("\t", 1)[0] for line in handle)


def _output_array(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if shape[0] == 0:  # an empty file cannot be memory-mapped
        np.save(path, np.zeros(shape, dtype=np.float32))
        return np.zeros(shape, dtype=np.float32)
    array = np.lib.format.open_memmap(path, "w+", np.float32, shape)
    # Claim the disk space now: a memory-mapped page that cannot be stored on a full disk kills
    # the process (SIGBUS) instead of raising an error that can be reported.
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system without it
            raise
    finally:
        os.close(fd)
    return array
