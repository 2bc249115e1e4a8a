"""Reuse embeddings from a run of the original VirNucPro on the same input.

The original splits the kept frames, in input order, into files of 10,000 and leaves per
split k (SPEC.md section 5):
  {prefix}_nucleotide/output_k_DNABERT_S.pt   {'nucleotide': ids, 'data': [{'label', 'mean_representation'}]}
  {prefix}_protein/output_k_ESM.pt            {'proteins': ids (by length), 'data': [tensor]}
  {prefix}_merged/output_k_merged.pt          {'ids': ids, 'data': tensor [n, D_dna + D_esm]}
Split k covers the frames that follow split k-1, so the files are read one at a time as the
frames stream by (flat memory). A split is used only when its ids are exactly the next frames
of this run, each frame's nucleotide sequence is the one the original recorded for it, and its
widths match the models; otherwise it is skipped with a warning. Ids alone are not enough: an
input whose sequences changed but kept their names gives the same frame ids, and reusing those
embeddings would be the stale reuse SPEC.md section 6 forbids. The original's record of the
sequences is the split's `{prefix}_nucleotide/output_k.fa` (one-line FASTA, the split's frames
in order) or, failing that, the whole `{prefix}_identified_nucleotide.fa` (all kept frames in
order; split k is its records after those of splits 1..k-1). With neither, nothing is reused.
Files are read with safe loading only: they are pickles, and nothing in them is executed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from virnucpro.errors import ModelError
from virnucpro.models.load import file_identity
from virnucpro.models.safe_load import safe_torch_load
from virnucpro.stages.types import Frame

# (frame, (dna row, protein row) or None)
FrameWithKnown = tuple[Frame, tuple[np.ndarray, np.ndarray] | None]


@dataclass(frozen=True)
class LegacySplit:
    name: str  # the file(s) it came from, for messages
    ids: list[str]  # frame order
    dna: np.ndarray  # [n, D_dna] float32, rows in `ids` order
    protein: np.ndarray | None  # [n, D_esm]; None when the original never got to ESM-2


def split_paths(prefix: str, k: int) -> tuple[Path, Path, Path]:
    return (Path(f"{prefix}_merged/output_{k}_merged.pt"),
            Path(f"{prefix}_nucleotide/output_{k}_DNABERT_S.pt"),
            Path(f"{prefix}_protein/output_{k}_ESM.pt"))


def split_fasta_path(prefix: str, k: int) -> Path:
    """The original's one-line FASTA of split k's frames (their nucleotide sequences)."""
    return Path(f"{prefix}_nucleotide/output_{k}.fa")


def identified_fasta_path(prefix: str) -> Path:
    """The original's one-line FASTA of all kept frames, before splitting."""
    return Path(f"{prefix}_identified_nucleotide.fa")


def has_legacy_files(prefix: str) -> bool:
    return any(p.is_file() for p in split_paths(prefix, 1))


def legacy_identity(prefix: str) -> list[str] | None:
    """Identities of the original's files that a run on `prefix` may reuse (None when there are
    none), for the checkpoint store's fingerprint: a run resumed with other (or no) legacy files
    must not mix its shards with those computed from these."""
    if not has_legacy_files(prefix):
        return None
    found: list[str] = []
    for k in itertools.count(1):
        if not any(p.is_file() for p in split_paths(prefix, k)):
            break
        found.extend(file_identity(p) for p in [*split_paths(prefix, k), split_fasta_path(prefix, k)]
                     if p.is_file())
    if identified_fasta_path(prefix).is_file():
        found.append(file_identity(identified_fasta_path(prefix)))
    return found


def _as_rows(values: Iterable, what: Path) -> np.ndarray:
    rows = [np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float32) for v in values]
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    if len({r.shape for r in rows}) != 1 or rows[0].ndim != 1:
        raise ValueError(f"{what}: embeddings of unequal shapes")
    return np.stack(rows)


def read_split(prefix: str, k: int, dna_dim: int) -> LegacySplit | None:
    """Split k's embeddings (None when no file of split k exists). Raises ValueError or
    ModelError for files that are there but unusable."""
    merged, nucleotide, protein = split_paths(prefix, k)
    if merged.is_file():
        data = safe_torch_load(merged, what="original VirNucPro merged features")
        features = np.asarray(data["data"].float().numpy(), dtype=np.float32)
        return LegacySplit(str(merged), list(data["ids"]), features[:, :dna_dim], features[:, dna_dim:])
    if not nucleotide.is_file():
        return None
    dna = safe_torch_load(nucleotide, what="original VirNucPro DNABERT-S embeddings")
    ids = list(dna["nucleotide"])
    by_label = {d["label"]: d["mean_representation"] for d in dna["data"]}
    dna_rows = _as_rows((by_label[i] for i in ids), nucleotide)
    if not protein.is_file():
        return LegacySplit(str(nucleotide), ids, dna_rows, None)
    esm = safe_torch_load(protein, what="original VirNucPro ESM-2 embeddings")
    by_id = dict(zip(esm["proteins"], esm["data"]))  # stored by protein length, not frame order
    if set(by_id) != set(ids):
        raise ValueError(f"{protein} and {nucleotide} hold different frames")
    return LegacySplit(f"{nucleotide} + {protein}", ids, dna_rows, _as_rows((by_id[i] for i in ids), protein))


def attach_legacy(
    frames: Iterator[Frame], prefix: str, dims: tuple[int, int], warn: Callable[[str], None],
) -> Iterator[FrameWithKnown]:
    """Pair each frame with its embeddings from the original's files, where they hold them."""
    frames = iter(frames)
    identified = _FastaCursor(identified_fasta_path(prefix))
    try:
        yield from _attach(frames, prefix, dims, warn, identified)
    finally:
        identified.close()


def _attach(frames: Iterator[Frame], prefix: str, dims: tuple[int, int], warn: Callable[[str], None],
            identified: _FastaCursor) -> Iterator[FrameWithKnown]:
    start = 0  # frames covered by the splits before split k
    for k in itertools.count(1):
        try:
            split = read_split(prefix, k, dims[0])
        except (ModelError, ValueError, KeyError, TypeError, AttributeError) as exc:
            warn(f"ignoring the original VirNucPro's files of split {k} and after: {exc}")
            break
        if split is None:
            break
        block = list(itertools.islice(frames, len(split.ids)))
        usable = (_check_split(split, block, dims, warn)
                  and _check_sequences(split, block, prefix, k, start, identified, warn))
        start += len(split.ids)
        for row, frame in enumerate(block):
            yield frame, ((split.dna[row], split.protein[row]) if usable else None)
        if len(block) < len(split.ids):
            return
    for frame in frames:
        yield frame, None


def _check_split(split: LegacySplit, block: list[Frame], dims: tuple[int, int],
                 warn: Callable[[str], None]) -> bool:
    if split.protein is None:
        return False  # the original stopped before ESM-2 reached this split: nothing worth reusing
    ids = [f.id for f in block]
    if ids != split.ids:
        row = next((r for r, (a, b) in enumerate(zip(ids, split.ids)) if a != b), min(len(ids), len(split.ids)))
        first = (f"frame {split.ids[row]}" if row < len(split.ids) else f"frame {ids[row]} (not in it)")
        warn(f"ignoring {split.name}: its frame ids are not those of this input, from {first} on "
             "(another input, or another chunk length)")
        return False
    if (split.dna.shape[1], split.protein.shape[1]) != dims:
        warn(f"ignoring {split.name}: embeddings of width {split.dna.shape[1]} + "
             f"{split.protein.shape[1]}, these models give {dims[0]} + {dims[1]}")
        return False
    return True


def _check_sequences(split: LegacySplit, block: list[Frame], prefix: str, k: int, start: int,
                     identified: _FastaCursor, warn: Callable[[str], None]) -> bool:
    """True when the original's record of the split's frames has, in order, exactly the ids and
    nucleotide sequences of `block` (whose ids already equal the split's)."""
    own = split_fasta_path(prefix, k)
    try:
        if own.is_file():
            source = own
            with open(own, encoding="utf-8") as handle:
                records = list(itertools.islice(_fasta_records(handle), len(block) + 1))
        elif identified.path.is_file():
            source = identified.path
            records = identified.take(start, len(block))
        else:
            warn(f"ignoring {split.name}: neither {own} nor {identified.path} is there to show "
                 "which nucleotide sequences its embeddings are of, so they may be stale")
            return False
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        warn(f"ignoring {split.name}: cannot read the original's frame sequences ({exc})")
        return False
    for row, frame in enumerate(block):
        record = records[row] if row < len(records) else None
        if record is None or record != (frame.id, frame.nt):
            problem = ("has no record of it" if record is None
                       else f"records {record[0]} there" if record[0] != frame.id
                       else "records another nucleotide sequence for it")
            warn(f"ignoring {split.name}: frame {frame.id} does not match {source}, which "
                 f"{problem} (the input changed since the original run)")
            return False
    if source == own and len(records) > len(block):
        warn(f"ignoring {split.name}: {own} holds more frames than the split")
        return False
    return True


def _fasta_records(handle: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(id, sequence) of each record; the id is the header's first word. Sequence lines are
    joined, so wrapped files read too (the original's are one line per sequence)."""
    name: str | None = None
    parts: list[str] = []
    for line in handle:
        line = line.rstrip("\r\n")
        if line.startswith(">"):
            if name is not None:
                yield name, "".join(parts)
            words = line[1:].split(maxsplit=1)
            name, parts = (words[0] if words else ""), []
        elif name is not None:
            parts.append(line.strip())
        elif line.strip():
            raise ValueError("text before the first FASTA header")
    if name is not None:
        yield name, "".join(parts)


class _FastaCursor:
    """Reads `{prefix}_identified_nucleotide.fa` forward only, opened on first use, so that
    split after split takes its records from it with flat memory."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None
        self._records: Iterator[tuple[str, str]] | None = None
        self._position = 0

    def take(self, start: int, count: int) -> list[tuple[str, str]]:
        """Records start .. start+count-1 (fewer at the end of the file); start never goes back."""
        if self._records is None:
            self._handle = open(self.path, encoding="utf-8")  # noqa: SIM115 - closed by close()
            self._records = _fasta_records(self._handle)
        if start < self._position:
            raise ValueError(f"{self.path}: records {start}.. were read already")
        for _ in itertools.islice(self._records, start - self._position):
            self._position += 1
        if self._position < start:
            return []
        taken = list(itertools.islice(self._records, count))
        self._position += len(taken)
        return taken

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
