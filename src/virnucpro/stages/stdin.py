"""Standard input as the run's input file (`virnucpro predict -`).

A run reads its input more than once (the id check, the stream of frames, the viral FASTA),
and standard input can be read only once: it is first copied, as it comes, into a temporary
file of the result folder, and that copy is the input. gzip is then recognised by its magic
bytes when the copy is read, as for any file. The copy's identity (for the checkpoint store's
fingerprint and the result folder's owner) is a hash of its content, computed while copying,
so a rerun that pipes the same data resumes. The copy is removed when the run ends, whatever
happens.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from virnucpro.errors import InputError, OutputError
from virnucpro.layout import STDIN_LABEL, open_temp, remove_quietly

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Spool:
    path: Path  # the copy
    identity: str  # 'standard input|sha256:...', in the form of config.file_identity


@contextmanager
def spooled_stdin(folder: Path, stream: BinaryIO | None = None) -> Iterator[Spool]:
    """Copy standard input (or `stream`) into a temporary in `folder`; yield it; remove it."""
    source = stream if stream is not None else _standard_input()
    path, handle = open_temp(folder, "stdin", text=False)
    try:
        with handle:
            digest = _copy(source, handle, path)
        with naming_stdin(path):
            yield Spool(path, f"{STDIN_LABEL}|sha256:{digest}")
    finally:
        remove_quietly(path)


def _standard_input() -> BinaryIO:
    if sys.stdin is None or sys.stdin.isatty():
        # reading would wait for someone to type a FASTA file
        raise InputError(f"{STDIN_LABEL} is a terminal: pipe FASTA/FASTQ into it, "
                         "e.g. zcat reads.fq.gz | virnucpro predict - -m 300")
    return sys.stdin.buffer


def _copy(source: BinaryIO, target: BinaryIO, path: Path) -> str:
    digest = hashlib.sha256()
    while True:
        try:
            block = source.read(_BLOCK)
        except OSError as exc:
            raise InputError(f"cannot read standard input: {exc.strerror or exc}") from None
        if not block:
            return digest.hexdigest()
        digest.update(block)
        try:
            target.write(block)
        except OSError as exc:
            raise OutputError(f"cannot copy standard input to {path}: {exc.strerror or exc}") from None


@contextmanager
def naming_stdin(path: Path) -> Iterator[None]:
    """Input errors name the copy's file (the readers know only a path): say 'standard input'."""
    try:
        yield
    except InputError as exc:
        raise InputError(str(exc).replace(str(path), STDIN_LABEL)) from None
