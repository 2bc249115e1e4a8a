"""--keep-intermediate: the original's FASTA intermediates, written as the frames stream by.

`{prefix}_chunked{L}.fa`, `{prefix}_identified_nucleotide.fa`, `{prefix}_identified_protein.faa`
(byte-identical to the original's). Each is written to a temporary name and renamed into place
only when the run succeeds, so an interrupted run never leaves a truncated file that looks whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from virnucpro.config import RunConfig
from virnucpro.errors import OutputError
from virnucpro.stages.types import Chunk, Frame
from virnucpro.stages.write import write_chunks_fasta, write_frames_fasta


class IntermediateFiles:
    def __init__(self, config: RunConfig) -> None:
        self.enabled = config.keep_intermediate
        self.paths = [
            config.intermediate_path(f"_chunked{config.chunk_len}.fa"),
            config.intermediate_path("_identified_nucleotide.fa"),
            config.intermediate_path("_identified_protein.faa"),
        ]
        self._handles: list[IO[str]] = []

    def _tmp(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.partial")

    def __enter__(self) -> "IntermediateFiles":
        if self.enabled:
            for path in self.paths:
                try:
                    self._handles.append(open(self._tmp(path), "w", newline="\n"))
                except OSError as exc:
                    self._close(success=False)
                    raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        return self

    def add_chunks(self, chunks: Sequence[Chunk]) -> None:
        if self.enabled:
            write_chunks_fasta(chunks, self._handles[0])

    def add_frames(self, frames: Sequence[Frame]) -> None:
        if self.enabled:
            write_frames_fasta(frames, self._handles[1], self._handles[2])

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close(success=exc_type is None)

    def _close(self, success: bool) -> None:
        for handle in self._handles:
            handle.close()
        for path, _ in zip(self.paths, self._handles):
            if success:
                os.replace(self._tmp(path), path)
            else:
                self._tmp(path).unlink(missing_ok=True)
        self._handles = []
