"""`virnucpro compare A B`: how far two result folders of the same input agree -- two
precisions, two versions, two machines -- for users who hold the real weights and want to
check a faster mode on their own data.

Frames are matched by id (prediction_results.txt), chunks by id (the highest-score table),
sequences by id (prediction_summary.tsv, when both folders have it), and, when both runs
saved embeddings, each frame's DNABERT-S and ESM-2 rows (embeddings/).
"""

from __future__ import annotations

import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from virnucpro.errors import InputError
from virnucpro.layout import EMBEDDINGS_DIRNAME, HIGHEST_NAME, RESULTS_NAME, SEQUENCES_NAME


@dataclass
class Agreement:
    compared: int = 0  # items found in both folders
    only_in_a: int = 0
    only_in_b: int = 0
    agree: int = 0  # of the compared, those with the same label

    @property
    def fraction(self) -> float | None:
        return self.agree / self.compared if self.compared else None


@dataclass
class Comparison:
    frames: Agreement = field(default_factory=Agreement)
    chunks: Agreement = field(default_factory=Agreement)
    sequences: Agreement | None = None
    score2_diff_max: float | None = None
    score2_diff_p99: float | None = None
    cosine: dict[str, dict[str, float]] = field(default_factory=dict)  # encoder -> median, min

    def as_dict(self) -> dict:
        out = asdict(self)
        for name in ("frames", "chunks", "sequences"):
            if out[name] is not None:
                out[name]["agreement"] = getattr(self, name).fraction
        return out


def _table(path: Path, key: int, columns: tuple[int, ...]) -> Iterator[tuple[str, tuple[str, ...]]]:
    if not path.is_file():
        raise InputError(f"{path}: not found (is {path.parent} a virnucpro result folder?)")
    with open(path, encoding="utf-8") as handle:
        next(handle, None)  # header
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            yield fields[key], tuple(fields[c] for c in columns)


def _matched(a: Path, b: Path, key: int, columns: tuple[int, ...], counts: Agreement):
    """The values of the rows both tables have, as (a's, b's) pairs, counting matches and
    strays in `counts`. Rows in the same order (two runs of one input) are matched as they
    stream, in flat memory; from the first difference on, b's rest is looked up by key."""
    rows_b = _table(b, key, columns)
    rest: dict[str, tuple[str, ...]] | None = None
    for name, values in _table(a, key, columns):
        if rest is None:
            other = next(rows_b, None)
            if other is not None and other[0] == name:
                counts.compared += 1
                yield values, other[1]
                continue
            rest = dict(rows_b)
            if other is not None:
                rest[other[0]] = other[1]
        found = rest.pop(name, None)
        if found is None:
            counts.only_in_a += 1
        else:
            counts.compared += 1
            yield values, found
    counts.only_in_b = len(rest) if rest is not None else sum(1 for _ in rows_b)


def compare_results(a: Path, b: Path) -> Comparison:
    result = Comparison()
    diffs = array.array("f")  # 4 bytes per frame
    for (label_a, score_a), (label_b, score_b) in _matched(a / RESULTS_NAME, b / RESULTS_NAME, 0, (1, 3),
                                                           result.frames):
        result.frames.agree += label_a == label_b
        diffs.append(abs(float(score_a) - float(score_b)))
    if diffs:
        values = np.frombuffer(diffs, dtype=np.float32)
        result.score2_diff_max, result.score2_diff_p99 = float(values.max()), float(np.quantile(values, 0.99))
    for x, y in _matched(a / HIGHEST_NAME, b / HIGHEST_NAME, 0, (1,), result.chunks):
        result.chunks.agree += x == y
    if (a / SEQUENCES_NAME).is_file() and (b / SEQUENCES_NAME).is_file():
        result.sequences = Agreement()
        for x, y in _matched(a / SEQUENCES_NAME, b / SEQUENCES_NAME, 0, (8,), result.sequences):
            result.sequences.agree += x == y
    if (a / EMBEDDINGS_DIRNAME).is_dir() and (b / EMBEDDINGS_DIRNAME).is_dir():
        result.cosine = _embedding_cosines(a / EMBEDDINGS_DIRNAME, b / EMBEDDINGS_DIRNAME)
    return result


def _embedding_cosines(a: Path, b: Path) -> dict[str, dict[str, float]]:
    ids_a = (a / "ids.txt").read_text().split()
    ids_b = (b / "ids.txt").read_text().split()
    where_b = {name: row for row, name in enumerate(ids_b)}
    rows_a = np.array([row for row, name in enumerate(ids_a) if name in where_b], dtype=np.int64)
    rows_b = np.array([where_b[ids_a[row]] for row in rows_a], dtype=np.int64)
    out = {}
    for encoder, file in (("dnabert_s", "dnabert_s.npy"), ("esm2", "esm2.npy")):
        x, y = np.load(a / file, mmap_mode="r"), np.load(b / file, mmap_mode="r")
        cosines = []
        for start in range(0, len(rows_a), 65_536):  # in blocks: flat memory on big runs
            u = np.asarray(x[rows_a[start:start + 65_536]], dtype=np.float64)
            v = np.asarray(y[rows_b[start:start + 65_536]], dtype=np.float64)
            norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
            cosines.append(np.einsum("ij,ij->i", u, v) / np.where(norms == 0, 1.0, norms))
        values = np.concatenate(cosines) if cosines else np.zeros(0)
        if len(values):
            out[encoder] = {"frames": int(len(values)), "median": float(np.median(values)), "min": float(values.min())}
    return out


def describe(result: Comparison, a: Path, b: Path) -> list[str]:
    def agreement(name: str, counts: Agreement | None) -> str:
        if counts is None:
            return f"{name}: not compared (no {SEQUENCES_NAME} in both folders)"
        share = f"{100 * counts.fraction:.3f} %" if counts.fraction is not None else "n/a"
        extra = f" ({counts.only_in_a:,} only in A, {counts.only_in_b:,} only in B)" if counts.only_in_a or counts.only_in_b else ""
        return f"{name}: {counts.agree:,} of {counts.compared:,} agree ({share}){extra}"

    lines = [f"A: {a}", f"B: {b}", agreement("frames (virus/others)", result.frames),
             agreement("chunks (Is_Virus)", result.chunks), agreement("sequences (call)", result.sequences)]
    if result.score2_diff_max is not None:
        lines.append(f"|score2 difference| per frame: max {result.score2_diff_max:.3g}, p99 {result.score2_diff_p99:.3g}")
    for encoder, figures in result.cosine.items():
        lines.append(f"{encoder} embedding cosine per frame: median {figures['median']:.6f}, min {figures['min']:.6f}")
    return lines
