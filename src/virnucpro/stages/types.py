"""Plain records passed between stages. Everything downstream is keyed by `id`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Record:
    """One input sequence: id = first whitespace-delimited word of the header; case kept."""

    id: str
    seq: str
    title: str = field(default="", compare=False)  # the header after '>' or '@', right-stripped


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a record, `{record_id}_chunk_{i}` (SPEC section 1)."""

    id: str
    seq: str


@dataclass(frozen=True, slots=True)
class Frame:
    """A kept (stop-free, non-empty) reading frame of a chunk (SPEC section 2).

    id  = chunk id + 'F'|'R' + frame number, e.g. `read7_chunk_1R2`
    nt  = the frame's nucleotide slice (upper case; one base past the last codon when room)
    aa  = its protein (no '*')
    """

    id: str
    nt: str
    aa: str


@dataclass(frozen=True)
class KnownEmbeddings:
    """Embeddings of some frames of a shard, computed by an earlier run (the original's)."""

    rows: np.ndarray  # [K] positions in the shard
    dna: np.ndarray  # [K, D_dna] float32
    protein: np.ndarray  # [K, D_esm] float32
