"""--save-embeddings: per-frame embeddings as plain NumPy files anyone can read.

`{result_dir}/embeddings/`:
  ids.txt         one frame id per line, the rows of prediction_results.txt in the same order
  dnabert_s.npy   float32 [N, 768]   (np.load(path, mmap_mode="r") reads it without loading it)
  esm2.npy        float32 [N, 2560]
Written as the shard results arrive in input order, beside prediction_results.txt, so nothing
is left to do once the last shard is in (the GPU does not idle while a pass over the stored
shards copies them out). The number of rows is known only at the end: each .npy file starts
with a header of fixed size that is written again, with the final shape, when the folder is
complete. The folder is built under a temporary name and appears only when complete: any
failure removes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np

from virnucpro.errors import OutputError
from virnucpro.layout import EMBEDDINGS_DIRNAME, new_temp_folder, remove_quietly, replace_folder

_NPY_MAGIC = b"\x93NUMPY\x01\x00"  # format version 1.0
_NPY_HEADER_BYTES = 128  # magic, length and the padded dict: room for any row count, 64-aligned


def npy_header(rows: int, width: int) -> bytes:
    """A .npy (version 1.0) header for a C-order float32 [rows, width] array, always
    _NPY_HEADER_BYTES long, so it can be rewritten in place once `rows` is known."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {width}), }}"
    room = _NPY_HEADER_BYTES - len(_NPY_MAGIC) - 2
    if len(text) + 1 > room:
        raise ValueError(f"array of shape ({rows}, {width}) too large for the fixed header")
    return _NPY_MAGIC + room.to_bytes(2, "little") + (text.ljust(room - 1) + "\n").encode("latin1")


class EmbeddingsWriter:
    """Use as a context over the result folder; `add` each shard's rows in input order."""

    def __init__(self, result_dir: Path, dims: tuple[int, int]) -> None:
        self.final = Path(result_dir) / EMBEDDINGS_DIRNAME
        self.dims = dims
        self.rows = 0
        self._folder: Path | None = None
        self._files: list[IO] = []

    def __enter__(self) -> "EmbeddingsWriter":
        try:
            self._folder = new_temp_folder(self.final.parent, EMBEDDINGS_DIRNAME)
            self._ids = open(self._folder / "ids.txt", "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            self._arrays = [open(self._folder / name, "wb") for name in ("dnabert_s.npy", "esm2.npy")]  # noqa: SIM115
            self._files = [self._ids, *self._arrays]
            for handle, width in zip(self._arrays, self.dims, strict=True):
                handle.write(npy_header(0, width))
        except OSError as exc:
            self._fail()
            raise OutputError(f"cannot write the embeddings to {self.final}: {exc.strerror or exc}") from None
        return self

    def add(self, ids: list[str], dna: np.ndarray | None, protein: np.ndarray | None) -> None:
        if dna is None or protein is None or dna.shape != (len(ids), self.dims[0]) \
                or protein.shape != (len(ids), self.dims[1]):
            raise ValueError(f"embeddings of {len(ids)} frames missing or of the wrong shape")
        try:
            self._ids.write("".join(f"{i}\n" for i in ids))
            for handle, rows in zip(self._arrays, (dna, protein), strict=True):
                handle.write(np.ascontiguousarray(rows, dtype=np.float32).data)
        except OSError as exc:
            raise OutputError(f"cannot write the embeddings to {self.final}: {exc.strerror or exc}") from None
        self.rows += len(ids)

    def _finish(self) -> None:
        for handle, width in zip(self._arrays, self.dims, strict=True):
            handle.seek(0)
            handle.write(npy_header(self.rows, width))
        for handle in self._files:
            handle.close()
        replace_folder(self._folder, self.final)
        self._folder = None

    def _fail(self) -> None:
        for handle in self._files:
            try:
                handle.close()
            except OSError:
                pass  # the error that brought us here is the one to report
        if self._folder is not None:
            remove_quietly(self._folder)
            self._folder = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._fail()
            return
        try:
            self._finish()
        except OSError as error:
            self._fail()
            raise OutputError(f"cannot write the embeddings to {self.final}: {error.strerror or error}") from None
