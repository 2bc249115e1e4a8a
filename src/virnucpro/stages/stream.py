"""The input as a stream of kept frames: records -> chunks -> frames, in input order, in
blocks (translation is vectorised over blocks of chunks), with flat memory."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from virnucpro.stages.chunk import iter_chunks
from virnucpro.stages.read import ReadPosition, read_records
from virnucpro.stages.translate import select_frames
from virnucpro.stages.types import Frame
from virnucpro.stages.write import IntermediateFiles

CHUNKS_PER_TRANSLATION_BLOCK = 8_192


def stream_frames(path: Path, chunk_len: int, files: IntermediateFiles, *,
                  on_empty: Callable[[str], None],
                  on_progress: Callable[[int, int, int, float], None]) -> Iterator[Frame]:
    """The kept frames of the file at `path`, writing intermediates on the way.

    on_empty(record id): an empty record, skipped. on_progress(bytes read, bytes in the file,
    frames so far, CPU seconds so far): after each block. Bytes consumed give progress a
    fraction and an ETA; counting the frames ahead would cost as much as these stages."""
    position = ReadPosition(path)
    chunks = iter_chunks(read_records(path, position), chunk_len, on_empty=on_empty)
    frames_read, cpu_seconds, t0 = 0, 0.0, time.perf_counter()
    while block := list(itertools.islice(chunks, CHUNKS_PER_TRANSLATION_BLOCK)):
        files.add_chunks(block)
        frames = select_frames(block)
        files.add_frames(frames)
        frames_read += len(frames)
        cpu_seconds += time.perf_counter() - t0
        on_progress(position.bytes_read(), position.total, frames_read, cpu_seconds)
        yield from frames
        t0 = time.perf_counter()
