"""--save-embeddings: per-frame embeddings as plain NumPy files anyone can read.

`{result_dir}/embeddings/`:
  ids.txt         one frame id per line, the rows of prediction_results.txt in the same order
  dnabert_s.npy   float32 [N, 768]   (np.load(path, mmap_mode="r") reads it without loading it)
  esm2.npy        float32 [N, 2560]
Built after the run from the checkpoint store's shards, in shard (= input) order, through
memory-mapped output arrays, so memory stays flat. Each shard's ids are those of the next rows
of prediction_results.txt (read alongside, when it is there), and the shard is loaded with
them where their number is known; a shard that is missing, damaged or holds other frames
stops the export with CheckpointMismatch naming its file. The folder appears only when
complete: any failure removes the partial one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from virnucpro.errors import CheckpointMismatch, OutputError
from virnucpro.stages.write import RESULTS_NAME
from virnucpro.store import STORE_DIRNAME, ShardResult, ShardStore

EMBEDDINGS_DIRNAME = "embeddings"


def write_embeddings(result_dir: Path, shard_count: int, frames: int, dims: tuple[int, int],
                     load: ShardStore | Callable[[int], ShardResult | None], *,
                     shard_sizes: Sequence[int] | None = None) -> Path:
    """Collect shards 0..shard_count-1 into result_dir/embeddings/.

    `load` is the checkpoint store (each shard is then loaded with need_embeddings and, when
    `shard_sizes` gives its number of frames, with its expected ids from prediction_results.txt)
    or a callable index -> shard (None when missing or damaged). Raises CheckpointMismatch for
    a shard that cannot be used, OutputError when the folder cannot be written."""
    final = result_dir / EMBEDDINGS_DIRNAME
    partial = result_dir / f".{EMBEDDINGS_DIRNAME}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir()
        _fill(partial, result_dir, shard_count, frames, dims, load, shard_sizes)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise OutputError(f"cannot write the embeddings to {final}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _fill(partial: Path, result_dir: Path, shard_count: int, frames: int, dims: tuple[int, int],
          load: ShardStore | Callable[[int], ShardResult | None], shard_sizes: Sequence[int] | None) -> None:
    dna = _output_array(partial / "dnabert_s.npy", (frames, dims[0]))
    protein = _output_array(partial / "esm2.npy", (frames, dims[1]))
    results = result_dir / RESULTS_NAME
    with open(partial / "ids.txt", "w", encoding="utf-8", newline="\n") as ids, \
            _result_ids(results) as expected_rows:
        row = 0
        for index in range(shard_count):
            path = _shard_file(load, result_dir, index)
            expected = None
            if isinstance(load, ShardStore):
                if shard_sizes is not None and expected_rows is not None:
                    expected = list(itertools.islice(expected_rows, shard_sizes[index]))
                shard = load.load(index, expected, need_embeddings=True)
            else:
                shard = load(index)
            if shard is None or shard.dna_embeddings is None or shard.protein_embeddings is None:
                raise CheckpointMismatch(
                    f"{path}: checkpoint shard missing, damaged, or without this run's frames and "
                    "embeddings; rerun (with --restart if need be) to recompute it")
            n = len(shard.ids)
            if expected is None and expected_rows is not None:
                expected = list(itertools.islice(expected_rows, n))
            if expected is not None and shard.ids != expected:
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
        if row != frames or (expected_rows is not None and next(expected_rows, None) is not None):
            raise CheckpointMismatch(
                f"{result_dir / STORE_DIRNAME}: the shards hold {row} frames, this run has {frames}"
                + (f" ({results} has more rows)" if row == frames else ""))
    for array in (dna, protein):
        if isinstance(array, np.memmap):
            array.flush()


def _at(ids: list[str], row: int) -> str:
    return ids[row] if row < len(ids) else "nothing"


def _shard_file(load: object, result_dir: Path, index: int) -> Path:
    """The shard's file, as the store names it."""
    if isinstance(load, ShardStore):
        return load.shard_path(index)
    return ShardStore.shard_path(SimpleNamespace(root=result_dir / STORE_DIRNAME), index)


@contextlib.contextmanager
def _result_ids(path: Path) -> Iterator[Iterator[str] | None]:
    """The frame ids of prediction_results.txt, in row order (None when there is no such file)."""
    if not path.is_file():
        yield None
        return
    with open(path, encoding="utf-8") as handle:
        next(handle, None)  # header
        yield (line.split("\t", 1)[0] for line in handle)


def _output_array(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if shape[0] == 0:  # an empty file cannot be memory-mapped
        np.save(path, np.zeros(shape, dtype=np.float32))
        return np.zeros(shape, dtype=np.float32)
    return np.lib.format.open_memmap(path, "w+", np.float32, shape)
