"""--save-embeddings: per-frame embeddings as plain NumPy files anyone can read.

`{result_dir}/embeddings/`:
  ids.txt         one frame id per line, the rows of prediction_results.txt in the same order
  dnabert_s.npy   float32 [N, 768]   (np.load(path, mmap_mode="r") reads it without loading it)
  esm2.npy        float32 [N, 2560]
Built after the run from the checkpoint store's shards, in shard (= input) order, through
memory-mapped output arrays, so memory stays flat. The folder appears only when complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from virnucpro.store import ShardResult

EMBEDDINGS_DIRNAME = "embeddings"


def write_embeddings(result_dir: Path, shard_count: int, frames: int, dims: tuple[int, int],
                     load: Callable[[int], ShardResult]) -> Path:
    """Collect shards 0..shard_count-1 (via `load`) into result_dir/embeddings/."""
    final = result_dir / EMBEDDINGS_DIRNAME
    partial = result_dir / f".{EMBEDDINGS_DIRNAME}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    dna = _output_array(partial / "dnabert_s.npy", (frames, dims[0]))
    protein = _output_array(partial / "esm2.npy", (frames, dims[1]))
    row = 0
    with open(partial / "ids.txt", "w", encoding="utf-8", newline="\n") as ids:
        for shard in map(load, range(shard_count)):
            n = len(shard.ids)
            dna[row:row + n] = shard.dna_embeddings
            protein[row:row + n] = shard.protein_embeddings
            ids.write("".join(f"{i}\n" for i in shard.ids))
            row += n
    assert row == frames, f"embeddings: {row} rows written, {frames} expected"
    for array in (dna, protein):
        if isinstance(array, np.memmap):
            array.flush()
    del dna, protein
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


def _output_array(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if shape[0] == 0:  # an empty file cannot be memory-mapped
        np.save(path, np.zeros(shape, dtype=np.float32))
        return np.zeros(shape, dtype=np.float32)
    return np.lib.format.open_memmap(path, "w+", np.float32, shape)
