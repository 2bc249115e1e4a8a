"""Reuse embeddings from a run of the original VirNucPro on the same input (a CPU stage).

The original splits the kept frames, in input order, into files of 10,000 and leaves per
split k (SPEC.md section 5):
  {prefix}_nucleotide/output_k_DNABERT_S.pt   {'nucleotide': ids, 'data': [{'label', 'mean_representation'}]}
  {prefix}_protein/output_k_ESM.pt            {'proteins': ids (by length), 'data': [tensor]}
  {prefix}_merged/output_k_merged.pt          {'ids': ids, 'data': tensor [n, D_dna + D_esm]}
Split k covers the frames that follow split k-1, so the files are read one at a time as the
frames stream by (flat memory): `OriginalRun.frames` checks each split against the frames it
covers and keeps the usable rows; `OriginalRun.known_for(shard's frames)` hands them out per
shard. A split is used only when its ids are exactly the next frames
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
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from virnucpro.config import file_identity
from virnucpro.errors import InputError, ModelError
from virnucpro.layout import OriginalRunFiles
from virnucpro.models.safe_load import safe_torch_load
from virnucpro.stages.read import read_records
from virnucpro.stages.types import Frame, KnownEmbeddings


@dataclass(frozen=True)
class OriginalSplit:
    name: str  # the file(s) it came from, for messages
    ids: list[str]  # frame order
    dna: np.ndarray  # [n, D_dna] float32, rows in `ids` order
    protein: np.ndarray | None  # [n, D_esm]; None when the original never got to ESM-2


def original_identity(files: OriginalRunFiles) -> list[str] | None:
    """Identities of the original's files that a run may reuse (None when there are none),
    for the checkpoint store's fingerprint: a run resumed with other (or no) such files must
    not mix its shards with those computed from these."""
    if not files.exists():
        return None
    found: list[str] = []
    for k in itertools.count(1):
        if not any(p.is_file() for p in files.embeddings(k)):
            break
        found.extend(file_identity(p) for p in [*files.embeddings(k), files.split_fasta(k)] if p.is_file())
    if files.identified_fasta.is_file():
        found.append(file_identity(files.identified_fasta))
    return found


def _as_rows(values: Iterable, what: Path) -> np.ndarray:
    rows = [np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float32) for v in values]
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    if len({r.shape for r in rows}) != 1 or rows[0].ndim != 1:
        raise ValueError(f"{what}: embeddings of unequal shapes")
    return np.stack(rows)


def read_split(files: OriginalRunFiles, k: int, dna_dim: int) -> OriginalSplit | None:
    """Split k's embeddings (None when no file of split k exists). Raises ValueError or
    ModelError for files that are there but unusable."""
    merged, nucleotide, protein = files.embeddings(k)
    if merged.is_file():
        data = safe_torch_load(merged, what="original VirNucPro merged features")
        features = np.asarray(data["data"].float().numpy(), dtype=np.float32)
        return OriginalSplit(str(merged), list(data["ids"]), features[:, :dna_dim], features[:, dna_dim:])
    if not nucleotide.is_file():
        return None
    dna = safe_torch_load(nucleotide, what="original VirNucPro DNABERT-S embeddings")
    ids = list(dna["nucleotide"])
    by_label = {d["label"]: d["mean_representation"] for d in dna["data"]}
    dna_rows = _as_rows((by_label[i] for i in ids), nucleotide)
    if not protein.is_file():
        return OriginalSplit(str(nucleotide), ids, dna_rows, None)
    esm = safe_torch_load(protein, what="original VirNucPro ESM-2 embeddings")
    by_id = dict(zip(esm["proteins"], esm["data"]))  # stored by protein length, not frame order
    if set(by_id) != set(ids):
        raise ValueError(f"{protein} and {nucleotide} hold different frames")
    return OriginalSplit(f"{nucleotide} + {protein}", ids, dna_rows, _as_rows((by_id[i] for i in ids), protein))


class OriginalRun:
    """The embeddings an original VirNucPro run on this input left, handed out per shard."""

    def __init__(self, files: OriginalRunFiles, dims: tuple[int, int], warn: Callable[[str], None]) -> None:
        self.files = files
        self.dims = dims
        self.warn = warn
        self.reused = 0  # frames handed out so far
        self._known: dict[str, tuple[OriginalSplit, int]] = {}  # frame id -> (split, row)

    def frames(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """Pass the frames through, checking each split against the frames it covers and
        keeping the rows of those that match (for known_for)."""
        frames = iter(frames)
        identified = _FastaCursor(self.files.identified_fasta)
        try:
            start = 0  # frames covered by the splits before split k
            for k in itertools.count(1):
                try:
                    split = read_split(self.files, k, self.dims[0])
                except (ModelError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    self.warn(f"ignoring the original VirNucPro's files of split {k} and after: {exc}")
                    break
                if split is None:
                    break
                block = list(itertools.islice(frames, len(split.ids)))
                if self._usable(split, block) and self._same_sequences(split, block, k, start, identified):
                    self._known.update((frame.id, (split, row)) for row, frame in enumerate(block))
                start += len(split.ids)
                yield from block
                if len(block) < len(split.ids):
                    return
            yield from frames
        finally:
            identified.close()

    def known_for(self, frames: list[Frame]) -> KnownEmbeddings | None:
        """Embeddings of those of `frames` the original computed (rows: their positions)."""
        hits = [(row, self._known.pop(frame.id)) for row, frame in enumerate(frames) if frame.id in self._known]
        if not hits:
            return None
        self.reused += len(hits)
        return KnownEmbeddings(np.asarray([row for row, _ in hits]),
                               np.stack([split.dna[i] for _, (split, i) in hits]),
                               np.stack([split.protein[i] for _, (split, i) in hits]))

    def _usable(self, split: OriginalSplit, block: list[Frame]) -> bool:
        if split.protein is None:
            return False  # the original stopped before ESM-2 reached this split: nothing worth reusing
        ids = [f.id for f in block]
        if ids != split.ids:
            row = next((r for r, (a, b) in enumerate(zip(ids, split.ids)) if a != b), min(len(ids), len(split.ids)))
            first = (f"frame {split.ids[row]}" if row < len(split.ids) else f"frame {ids[row]} (not in it)")
            self.warn(f"ignoring {split.name}: its frame ids are not those of this input, from {first} on "
                      "(another input, or another chunk length)")
            return False
        if (split.dna.shape[1], split.protein.shape[1]) != self.dims:
            self.warn(f"ignoring {split.name}: embeddings of width {split.dna.shape[1]} + "
                      f"{split.protein.shape[1]}, these models give {self.dims[0]} + {self.dims[1]}")
            return False
        return True

    def _same_sequences(self, split: OriginalSplit, block: list[Frame], k: int, start: int,
                        identified: "_FastaCursor") -> bool:
        """True when the original's record of the split's frames has, in order, exactly the
        ids and nucleotide sequences of `block` (whose ids already equal the split's)."""
        own = self.files.split_fasta(k)
        try:
            if own.is_file():
                source = own
                with closing(_id_and_sequence(own)) as found:
                    records = list(itertools.islice(found, len(block) + 1))
            elif identified.path.is_file():
                source = identified.path
                records = identified.take(start, len(block))
            else:
                self.warn(f"ignoring {split.name}: neither {own} nor {identified.path} is there to show "
                          "which nucleotide sequences its embeddings are of, so they may be stale")
                return False
        except (InputError, ValueError) as exc:
            self.warn(f"ignoring {split.name}: cannot read the original's frame sequences ({exc})")
            return False
        for row, frame in enumerate(block):
            record = records[row] if row < len(records) else None
            if record is None or record != (frame.id, frame.nt):
                problem = ("has no record of it" if record is None
                           else f"records {record[0]} there" if record[0] != frame.id
                           else "records another nucleotide sequence for it")
                self.warn(f"ignoring {split.name}: frame {frame.id} does not match {source}, which "
                          f"{problem} (the input changed since the original run)")
                return False
        if source == own and len(records) > len(block):
            self.warn(f"ignoring {split.name}: {own} holds more frames than the split")
            return False
        return True


def _id_and_sequence(path: Path) -> Iterator[tuple[str, str]]:
    return ((record.id, record.seq) for record in read_records(path))


class _FastaCursor:
    """Reads `{prefix}_identified_nucleotide.fa` forward only, opened on first use, so that
    split after split takes its records from it with flat memory."""

    def __init__(self, path: Path):
        self.path = path
        self._records: Iterator[tuple[str, str]] | None = None
        self._position = 0

    def take(self, start: int, count: int) -> list[tuple[str, str]]:
        """Records start .. start+count-1 (fewer at the end of the file); start never goes back."""
        if self._records is None:
            self._records = _id_and_sequence(self.path)
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
        if self._records is not None:
            self._records.close()
