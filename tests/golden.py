"""The one place tests find the project's shared folder, and what happens when it is absent.

The shared folder (golden files of the original VirNucPro, genomes, the real DNABERT-S
tokenizer, a run of the original) sits beside the repository (`<parent>/main` and
`<parent>/shared`), so it is found relative to this file -- never by an absolute path.
`VIRNUCPRO_SHARED_DIR` points elsewhere (a nonexistent path hides it, to try a user's clone).

Golden sets: `../shared/golden` when present, else the unchanged subset vendored in
`tests/data/golden` (see its PROVENANCE.md), so a clone alone still checks byte-exactness.

Anything else missing skips the test with a stated reason, or fails it when
`VIRNUCPRO_REQUIRE_GOLDEN=1` (CI sets it: there, a missing folder must not pass silently).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("VIRNUCPRO_SHARED_DIR") or REPO.parent / "shared")
SHARED_GOLDEN_DIR = SHARED_DIR / "golden"
VENDORED_GOLDEN_DIR = REPO / "tests" / "data" / "golden"
GOLDEN_DIR = SHARED_GOLDEN_DIR if SHARED_GOLDEN_DIR.is_dir() else VENDORED_GOLDEN_DIR
GENOMES_DIR = SHARED_DIR / "data" / "genomes"
LEGACY_DIR = SHARED_GOLDEN_DIR / "legacy_original_run"
REAL_TOKENIZER = SHARED_DIR / "models" / "dnabert-s_tokenizer.json"

GOLDEN_SETS = ("edge_cases", "reads150", "contigs")
CHUNK_LENGTHS = (300, 500)

REQUIRED = os.environ.get("VIRNUCPRO_REQUIRE_GOLDEN") == "1"


def require(path: Path, what: str) -> Path:
    """`path` if it exists; otherwise skip the calling test, or fail it when required."""
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if not SHARED_DIR.is_dir():
        message += f" (no shared folder at {SHARED_DIR})"
    if REQUIRED:
        pytest.fail(f"{message}; VIRNUCPRO_REQUIRE_GOLDEN=1 makes this a failure", pytrace=False)
    pytest.skip(message)


def golden_case(name: str, chunk_len: int) -> Path:
    """Folder of one golden set: from ../shared/golden, else from the vendored subset."""
    return require(GOLDEN_DIR / name / f"L{chunk_len}", f"golden set {name}/L{chunk_len}")


def legacy_run() -> Path:
    """The folder of the original's real run (never vendored)."""
    return require(LEGACY_DIR, "the original's run")


def real_tokenizer() -> Path:
    return require(REAL_TOKENIZER, "the real DNABERT-S tokenizer.json")


def genome(file_name: str) -> Path:
    return require(GENOMES_DIR / file_name, "genome")


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
