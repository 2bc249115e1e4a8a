"""Where the golden files live, and a skip marker for checkouts without them.

The shared folder sits beside the repository (`<parent>/main` and `<parent>/shared`), in CI
as here, so it is found relative to this file -- never by an absolute path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN_DIR = SHARED_DIR / "golden"
GENOMES_DIR = SHARED_DIR / "data" / "genomes"
LEGACY_DIR = GOLDEN_DIR / "legacy_original_run"

GOLDEN_SETS = ("edge_cases", "reads150", "contigs")
CHUNK_LENGTHS = (300, 500)

requires_golden = pytest.mark.skipif(
    not GOLDEN_DIR.is_dir(), reason=f"golden files not found at {GOLDEN_DIR}"
)
requires_genomes = pytest.mark.skipif(
    not GENOMES_DIR.is_dir(), reason=f"genomes not found at {GENOMES_DIR}"
)


def golden_case(name: str, chunk_len: int) -> Path:
    """Folder of one golden set; skips the calling test when it is absent."""
    folder = GOLDEN_DIR / name / f"L{chunk_len}"
    if not folder.is_dir():
        pytest.skip(f"golden folder {folder} not found")
    return folder


def read_score_table(path: Path, id_col: int, score1_col: int, score2_col: int):
    """(ids, score1, score2) from a TAB table with a header row; scores parsed as float32.

    The golden tables hold float32 shortest reprs, so parsing them as float32 gives back
    exactly the values the original formatted.
    """
    ids, score1, score2 = [], [], []
    for line in path.read_text().splitlines()[1:]:
        fields = line.split("\t")
        ids.append(fields[id_col])
        score1.append(np.float32(fields[score1_col]))
        score2.append(np.float32(fields[score2_col]))
    return ids, np.array(score1, dtype=np.float32), np.array(score2, dtype=np.float32)
