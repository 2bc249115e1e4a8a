"""Reuse embeddings from a run of the original VirNucPro on the same input.

The original splits the kept frames, in input order, into files of 10,000 and leaves per
split k (SPEC.md section 5):
  {prefix}_nucleotide/output_k_DNABERT_S.pt   {'nucleotide': ids, 'data': [{'label', 'mean_representation'}]}
  {prefix}_protein/output_k_ESM.pt            {'proteins': ids (by length), 'data': [tensor]}
  {prefix}_merged/output_k_merged.pt          {'ids': ids, 'data': tensor [n, D_dna + D_esm]}
Split k covers the frames that follow split k-1, so the files are read one at a time as the
frames stream by (flat memory). A split is used only when its ids are exactly the next frames
of this run and its widths match the models; otherwise it is skipped with a warning. Files are
read with safe loading only: they are pickles, and nothing in them is executed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from virnucpro.errors import ModelError
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


def has_legacy_files(prefix: str) -> bool:
    return any(p.is_file() for p in split_paths(prefix, 1))


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
    for k in itertools.count(1):
        try:
            split = read_split(prefix, k, dims[0])
        except (ModelError, ValueError, KeyError, TypeError, AttributeError) as exc:
            warn(f"ignoring the original VirNucPro's files of split {k} and after: {exc}")
            break
        if split is None:
            break
        block = list(itertools.islice(frames, len(split.ids)))
        usable = _check_split(split, block, dims, warn)
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
    if [f.id for f in block] != split.ids:
        warn(f"ignoring {split.name}: its frame ids are not those of this input "
             "(another input, or another chunk length)")
        return False
    if (split.dna.shape[1], split.protein.shape[1]) != dims:
        warn(f"ignoring {split.name}: embeddings of width {split.dna.shape[1]} + "
             f"{split.protein.shape[1]}, these models give {dims[0]} + {dims[1]}")
        return False
    return True
